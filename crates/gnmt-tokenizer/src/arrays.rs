//! One-dimensional u32/u64 arrays in a safetensors file, written and read in chunks: a
//! binarized WMT-sized corpus is gigabytes of ids, and neither side may hold a second copy of
//! them (the `safetensors` crate serialises to, and reads from, one buffer of the whole file).
//! The files are plain safetensors: any reader of the format reads them.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::{json, Value};

use crate::io::AtomicFile;
use crate::{Error, Result};

/// Bytes converted per write or read.
const CHUNK: usize = 1 << 16;

/// An array to write.
pub enum Array<'a> {
    U32(&'a [u32]),
    U64(&'a [u64]),
}

impl Array<'_> {
    fn dtype(&self) -> &'static str {
        match self {
            Array::U32(_) => "U32",
            Array::U64(_) => "U64",
        }
    }

    fn len(&self) -> usize {
        match self {
            Array::U32(v) => v.len(),
            Array::U64(v) => v.len(),
        }
    }

    fn byte_len(&self) -> u64 {
        match self {
            Array::U32(v) => 4 * v.len() as u64,
            Array::U64(v) => 8 * v.len() as u64,
        }
    }

    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        fn le<T: Copy, const N: usize>(
            out: &mut impl Write,
            v: &[T],
            bytes: impl Fn(T) -> [u8; N],
        ) -> std::io::Result<()> {
            let mut buf = Vec::with_capacity(CHUNK * N);
            for chunk in v.chunks(CHUNK) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|&x| bytes(x)));
                out.write_all(&buf)?;
            }
            Ok(())
        }
        match self {
            Array::U32(v) => le(out, v, u32::to_le_bytes),
            Array::U64(v) => le(out, v, u64::to_le_bytes),
        }
    }
}

/// Writes `arrays` (in this order) and `metadata` to `path`, atomically.
pub fn write(
    path: &Path,
    metadata: &HashMap<String, String>,
    arrays: &[(&str, Array)],
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0u64;
    for (name, a) in arrays {
        let end = offset + a.byte_len();
        header.insert(
            name.to_string(),
            json!({"dtype": a.dtype(), "shape": [a.len()], "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).expect("plain JSON");
    // The data starts at a multiple of 8 bytes, padded with spaces as the format allows.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = AtomicFile::create(path)?;
    let io = |e| Error::io(path, e);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (_, a) in arrays {
        a.write_to(&mut out).map_err(io)?;
    }
    out.commit()
}

/// A file opened for reading its arrays one at a time.
pub struct Reader {
    file: BufReader<std::fs::File>,
    path: std::path::PathBuf,
    data_start: u64,
    /// name -> (dtype, element count, byte offsets in the data)
    arrays: BTreeMap<String, (String, usize, (u64, u64))>,
    pub metadata: HashMap<String, String>,
}

impl Reader {
    /// Reads and checks the header: every array one-dimensional, of a known integer type, its
    /// bytes where the header says and inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|_| invalid("too short for a safetensors file".into()))?;
        let n = u64::from_le_bytes(n);
        if n > size.saturating_sub(8) || n > 100 << 20 {
            return Err(invalid(format!("header of {n} bytes in a file of {size}")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| Error::io(path, e))?;
        let header: serde_json::Map<String, Value> = serde_json::from_slice(&header)
            .map_err(|e| invalid(format!("unreadable header: {e}")))?;
        let data_start = 8 + n;
        let mut arrays = BTreeMap::new();
        let mut metadata = HashMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                metadata =
                    serde_json::from_value(v).map_err(|e| invalid(format!("bad metadata: {e}")))?;
                continue;
            }
            let field = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
            let dtype = field("dtype").as_str().unwrap_or("").to_string();
            let width = match dtype.as_str() {
                "U32" => 4,
                "U64" => 8,
                other => return Err(invalid(format!("{name} is {other:?}, not U32 or U64"))),
            };
            let shape: Vec<u64> = serde_json::from_value(field("shape"))
                .map_err(|_| invalid(format!("{name}: bad shape")))?;
            let offsets: (u64, u64) = serde_json::from_value(field("data_offsets"))
                .map_err(|_| invalid(format!("{name}: bad data_offsets")))?;
            let [len] = shape[..] else {
                return Err(invalid(format!("{name} is not one-dimensional")));
            };
            let fits = offsets.0 <= offsets.1
                && offsets.1 - offsets.0 == len * width
                && data_start + offsets.1 <= size;
            if !fits {
                return Err(invalid(format!(
                    "{name}: its bytes are not where the header says"
                )));
            }
            arrays.insert(name, (dtype, len as usize, offsets));
        }
        Ok(Self {
            file: BufReader::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            data_start,
            arrays,
            metadata,
        })
    }

    fn bytes_of<const N: usize, T>(
        &mut self,
        name: &str,
        dtype: &str,
        from: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let invalid = |reason: String| Error::Invalid {
            path: self.path.clone(),
            reason,
        };
        let Some((have, len, (start, _))) = self.arrays.get(name).cloned() else {
            return Err(invalid(format!("no array {name}")));
        };
        if have != dtype {
            return Err(invalid(format!("{name} is {have}, expected {dtype}")));
        }
        let io = |e| Error::io(&self.path, e);
        self.file
            .seek(SeekFrom::Start(self.data_start + start))
            .map_err(io)?;
        let mut out = Vec::with_capacity(len);
        let mut buf = vec![0u8; CHUNK * N];
        while out.len() < len {
            let take = (len - out.len()).min(CHUNK);
            let bytes = &mut buf[..take * N];
            self.file
                .read_exact(bytes)
                .map_err(|e| Error::io(&self.path, e))?;
            out.extend(
                bytes
                    .chunks_exact(N)
                    .map(|c| from(c.try_into().expect("N bytes"))),
            );
        }
        Ok(out)
    }

    pub fn u32s(&mut self, name: &str) -> Result<Vec<u32>> {
        self.bytes_of(name, "U32", u32::from_le_bytes)
    }

    pub fn u64s(&mut self, name: &str) -> Result<Vec<u64>> {
        self.bytes_of(name, "U64", u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is written reads back, and the `safetensors` crate reads it as the same tensors:
    /// the files are plain safetensors.
    #[test]
    fn arrays_round_trip_and_are_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let ids: Vec<u32> = (0..200_001).map(|i| i * 7 % 1000).collect();
        let offsets: Vec<u64> = vec![0, 5, 1 << 40];
        let meta = HashMap::from([("key".to_string(), "v".to_string())]);
        write(
            &path,
            &meta,
            &[
                ("ids", Array::U32(&ids)),
                ("offsets", Array::U64(&offsets)),
                ("empty", Array::U32(&[])),
            ],
        )
        .unwrap();
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.metadata, meta);
        assert_eq!(r.u64s("offsets").unwrap(), offsets);
        assert_eq!(r.u32s("ids").unwrap(), ids);
        assert_eq!(r.u32s("empty").unwrap(), Vec::<u32>::new());
        assert!(r
            .u64s("ids")
            .unwrap_err()
            .to_string()
            .contains("expected U64"));
        assert!(r.u32s("nothing").is_err());
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("ids").unwrap();
        assert_eq!(t.shape(), [200_001]);
        assert_eq!(&t.data()[..8], &[0, 0, 0, 0, 7, 0, 0, 0]);
        // A cut file is refused when opened, naming the problem.
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let e = Reader::open(&path).err().unwrap().to_string();
        assert!(e.contains("not where the header says"), "{e}");
    }
}
