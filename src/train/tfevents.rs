//! TensorBoard's event-file format, written: TFRecord framing around `Event` protobufs.
//!
//! ```text
//! record = length: u64 LE | masked CRC-32C of the 8 length bytes: u32 LE
//!        | data: `length` bytes (one serialised Event) | masked CRC-32C of data: u32 LE
//! masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8   (wrapping)
//! ```
//! The messages are the fields of TensorFlow's `event.proto`, `summary.proto` and
//! `tensor.proto` that scalars and text need, declared with prost's derive under the same
//! field numbers (readers skip what they do not know, so the subset is a valid Event).
//! A file starts with the `file_version` event TensorBoard expects ("brain.Event:2").
use prost::Message;

/// What TensorBoard and `tbparse` check the first event for.
pub const FILE_VERSION: &str = "brain.Event:2";

/// TensorFlow's `DataType::DT_STRING`.
const DT_STRING: i32 = 7;

#[derive(Clone, PartialEq, Message)]
pub struct Event {
    /// Unix time in seconds.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Value {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    #[prost(oneof = "Kind", tags = "2, 8")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// A scalar (TensorBoard's scalars dashboard reads `simple_value`, an f32).
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// Absent dims: a scalar.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShape {}

impl Event {
    pub fn file_version(wall_time: f64) -> Event {
        Event { wall_time, step: 0, what: Some(What::FileVersion(FILE_VERSION.into())) }
    }

    /// One event holding every `(tag, value)` of a step as scalars.
    pub fn scalars(wall_time: f64, step: u64, values: &[(String, f64)]) -> Event {
        let value = values
            .iter()
            .map(|(tag, v)| Value { tag: tag.clone(), metadata: None, kind: Some(Kind::SimpleValue(*v as f32)) })
            .collect();
        Event { wall_time, step: step as i64, what: Some(What::Summary(Summary { value })) }
    }

    /// A text summary (the text dashboard renders it as Markdown).
    pub fn text(wall_time: f64, step: u64, tag: &str, text: &str) -> Event {
        let tensor = TensorProto {
            dtype: DT_STRING,
            tensor_shape: Some(TensorShape {}),
            string_val: vec![text.as_bytes().to_vec()],
        };
        let metadata =
            SummaryMetadata { plugin_data: Some(PluginData { plugin_name: "text".into(), content: vec![] }) };
        let value = Value { tag: tag.into(), metadata: Some(metadata), kind: Some(Kind::Tensor(tensor)) };
        Event { wall_time, step: step as i64, what: Some(What::Summary(Summary { value: vec![value] })) }
    }

    /// The event framed as one TFRecord, appended to `out`.
    pub fn append_record(&self, out: &mut Vec<u8>) {
        let data = self.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked_crc(&len).to_le_bytes());
        out.extend_from_slice(&data);
        out.extend_from_slice(&masked_crc(&data).to_le_bytes());
    }
}

/// TFRecord's masked CRC-32C (a CRC over data that holds CRCs is weak; the mask fixes that).
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The records of an event file, decoded (tests, and appending after a check).
pub fn read_records(bytes: &[u8]) -> std::result::Result<Vec<Event>, String> {
    let mut events = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = bytes.get(at..at + 12).ok_or_else(|| format!("truncated record header at byte {at}"))?;
        let len_bytes = &header[..8];
        if masked_crc(len_bytes) != u32::from_le_bytes(header[8..12].try_into().unwrap()) {
            return Err(format!("bad length checksum at byte {at}"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let data = bytes.get(at + 12..at + 12 + len).ok_or_else(|| format!("truncated record at byte {at}"))?;
        let crc = bytes.get(at + 12 + len..at + 16 + len).ok_or_else(|| format!("truncated record at byte {at}"))?;
        if masked_crc(data) != u32::from_le_bytes(crc.try_into().unwrap()) {
            return Err(format!("bad data checksum at byte {at}"));
        }
        events.push(Event::decode(data).map_err(|e| format!("record at byte {at}: {e}"))?);
        at += 16 + len;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value for "123456789" (0xE3069283, RFC 3720 B.4), and the masked
    /// CRCs TensorBoard's own `masked_crc32c` gives (tensorboard 2.21, computed once).
    #[test]
    fn crc_is_castagnoli_masked_as_tfrecord_does() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc(b""), 0xa282_ead8);
    }

    #[test]
    fn records_round_trip_and_damage_is_found() {
        let mut bytes = Vec::new();
        Event::file_version(1.5).append_record(&mut bytes);
        Event::scalars(2.0, 7, &[("train/loss".into(), 0.25)]).append_record(&mut bytes);
        Event::text(3.0, 0, "config", "a = 1").append_record(&mut bytes);
        let back = read_records(&bytes).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].what, Some(What::FileVersion(FILE_VERSION.into())));
        let Some(What::Summary(s)) = &back[1].what else { panic!("not a summary") };
        assert_eq!((back[1].step, s.value[0].tag.as_str()), (7, "train/loss"));
        assert_eq!(s.value[0].kind, Some(Kind::SimpleValue(0.25)));
        let last = bytes.len() - 5;
        bytes[last] ^= 1;
        assert!(read_records(&bytes).unwrap_err().contains("checksum"));
    }
}
