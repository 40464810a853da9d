# Everyday recipes. The README's commands work without `just`; these are shortcuts.

# The whole test suite (what CI runs first).
test:
    cargo test --release --workspace

# Everything CI runs, including the Python interoperability checks.
ci:
    bash .ci/run

# Data pipeline benchmark: Multi30k train from text to batches, 1 and 2 threads.
bench-data:
    cargo run --release --bin gnmt -- --threads 1 bench data
    cargo run --release --bin gnmt -- --threads 2 bench data

# Shared 8k vocabulary on Multi30k En+De, into runs/vocab-multi30k/.
vocab-multi30k data="../shared/data/multi30k":
    cargo run --release --bin gnmt -- vocab --train {{data}}/train.en {{data}}/train.de --size 8000 -o runs/vocab-multi30k

fmt:
    cargo fmt --all

# Model training-step benchmark (forward + backward), 1 and 2 threads.
bench-model preset="small":
    cargo run --release --bin gnmt -- bench model --preset {{preset}}

# Train the small preset on Multi30k En->De for up to an hour, into runs/multi30k-small.
train-multi30k data="../shared/data/multi30k":
    cargo run --release --bin gnmt -- train --train {{data}}/train.en {{data}}/train.de --valid {{data}}/val.en {{data}}/val.de --preset small -o runs/multi30k-small --max-time 60m --valid-every 400 --save-every 400
