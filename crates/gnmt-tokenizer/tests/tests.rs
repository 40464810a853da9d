//! Integration tests of the text side, on Multi30k and on hostile input.

mod round_trip;
