//! The safetensors format, read one tensor at a time (so loading a shard never holds it twice)
//! and written with the `{"format": "pt"}` metadata that `transformers` checks.
//! Layout: u64 LE header length, a JSON header `{name: {dtype, shape, data_offsets}}`, data.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Location, Result};

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::input(path, Location::File, "safetensors", msg)
}

fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "F64" => Kind::Double,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

/// The tensor names of a file, from its header alone.
pub fn keys(path: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, "cannot open weights", e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(path, format!("cannot read the header: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(bad(path, "header length implausible"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(path, format!("truncated header: {e}")))?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(path, format!("header is not JSON: {e}")))?;
    Ok(header.into_keys().filter(|k| k != "__metadata__").collect())
}

/// Calls `visit(name, tensor)` for every tensor of the file, in file order, creating each
/// tensor (on the CPU, in its stored dtype) only for the duration of its call.
pub fn for_each_tensor<F>(path: &Path, mut visit: F) -> Result<()>
where
    F: FnMut(&str, Tensor) -> Result<()>,
{
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read weights", e))?;
    if bytes.len() < 8 {
        return Err(bad(path, "file shorter than its header"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = bytes.get(8..8 + n).ok_or_else(|| bad(path, "header length beyond end of file"))?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| bad(path, format!("header is not JSON: {e}")))?;
    let data = &bytes[8 + n..];
    let mut entries: Vec<_> = header.iter().filter(|(k, _)| *k != "__metadata__").collect();
    entries.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap_or(0));
    for (name, info) in entries {
        let dtype = info["dtype"].as_str().unwrap_or("?");
        let kind = kind_of(dtype).ok_or_else(|| bad(path, format!("{name}: unsupported dtype {dtype}")))?;
        let shape: Vec<i64> =
            info["shape"].as_array().map(|a| a.iter().filter_map(|x| x.as_i64()).collect()).unwrap_or_default();
        let (s, e) = (info["data_offsets"][0].as_u64(), info["data_offsets"][1].as_u64());
        let (s, e) = match (s, e) {
            (Some(s), Some(e)) if s <= e && (e as usize) <= data.len() => (s as usize, e as usize),
            _ => return Err(bad(path, format!("{name}: bad data_offsets"))),
        };
        let numel: i64 = shape.iter().product();
        if (e - s) as i64 != numel * kind.elt_size_in_bytes() as i64 {
            return Err(bad(path, format!("{name}: {} bytes for shape {shape:?} {dtype}", e - s)));
        }
        let t =
            Tensor::f_from_data_size(&data[s..e], &shape, kind).map_err(|err| bad(path, format!("{name}: {err}")))?;
        visit(name, t)?;
    }
    Ok(())
}

/// Reads every tensor of a file (small files: fixtures, heads).
pub fn read_all(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for_each_tensor(path, |name, t| {
        out.push((name.to_string(), t));
        Ok(())
    })?;
    Ok(out)
}

/// Writes `tensors` (any device, contiguous or not) atomically, names sorted. Tensors are
/// copied to the host one at a time while writing, so an export never holds the model twice.
pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, t) in &sorted {
        let dtype = dtype_of(t.kind())
            .ok_or_else(|| Error::usage(name.clone(), format!("cannot save dtype {:?}", t.kind())))?;
        let len = t.numel() * t.kind().elt_size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.size(), "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut head = serde_json::to_vec(&header).expect("JSON header");
    // Data starts 8-byte aligned, as the reference writer does.
    while !(8 + head.len()).is_multiple_of(8) {
        head.push(b' ');
    }
    crate::atomic::write_file(path, |w| {
        w.write_all(&(head.len() as u64).to_le_bytes())?;
        w.write_all(&head)?;
        for (_, t) in &sorted {
            let t = t.to_device(tch::Device::Cpu).contiguous();
            let numel = t.numel();
            let mut buf = vec![0u8; numel * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut buf, numel).map_err(std::io::Error::other)?;
            w.write_all(&buf)?;
        }
        Ok(())
    })
}
