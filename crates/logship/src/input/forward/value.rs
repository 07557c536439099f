//! The values of a decoded frame, read where they lie: a pull reader over MessagePack
//! bytes that the frame walk ([`super::frame::Walker`]) already bounded. Scalars come
//! whole, strings, binaries and extensions as slices of the frame, arrays and maps as
//! their number of items; a record is a checked slice, read field by field. Nothing is
//! allocated but the JSON of a record that is not a driver's.

use rmp::Marker;

use super::frame::{FrameError, invalid, utf8};

/// One MessagePack value as a pull parser sees it: scalars whole, strings, binaries and
/// extensions as slices of the frame, arrays and maps as their number of items (which
/// follow in the reader).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// nil.
    Nil,
    /// true or false.
    Bool(bool),
    /// A non-negative integer.
    Uint(u64),
    /// A negative integer (or a signed encoding of any integer).
    Int(i64),
    /// float 32.
    F32(f32),
    /// float 64.
    F64(f64),
    /// str: bytes that should be UTF-8.
    Str(&'a [u8]),
    /// bin.
    Bin(&'a [u8]),
    /// ext: its type and data.
    Ext(i8, &'a [u8]),
    /// An array of this many values.
    Array(u32),
    /// A map of this many pairs.
    Map(u32),
}

/// Reads values from bytes the [`Walker`](super::frame::Walker) accepted; a value that ends early is refused
/// (it cannot happen after a walk, but packed entries are read the same way).
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// How many bytes were read.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| invalid("a value ends early"))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn uint(&mut self, width: usize) -> Result<u64, FrameError> {
        Ok(self
            .take(width)?
            .iter()
            .fold(0u64, |n, b| (n << 8) | u64::from(*b)))
    }

    /// The next value (for an array or a map, its header).
    pub fn value(&mut self) -> Result<Value<'a>, FrameError> {
        let byte = self.take(1)?[0];
        let len = |r: &mut Self, w: usize| r.uint(w).map(|n| n as usize);
        Ok(match Marker::from_u8(byte) {
            Marker::FixPos(n) => Value::Uint(u64::from(n)),
            Marker::FixNeg(n) => Value::Int(i64::from(n)),
            Marker::Null => Value::Nil,
            Marker::True => Value::Bool(true),
            Marker::False => Value::Bool(false),
            Marker::U8 => Value::Uint(self.uint(1)?),
            Marker::U16 => Value::Uint(self.uint(2)?),
            Marker::U32 => Value::Uint(self.uint(4)?),
            Marker::U64 => Value::Uint(self.uint(8)?),
            Marker::I8 => Value::Int(i64::from(self.uint(1)? as u8 as i8)),
            Marker::I16 => Value::Int(i64::from(self.uint(2)? as u16 as i16)),
            Marker::I32 => Value::Int(i64::from(self.uint(4)? as u32 as i32)),
            Marker::I64 => Value::Int(self.uint(8)? as i64),
            Marker::F32 => Value::F32(f32::from_bits(self.uint(4)? as u32)),
            Marker::F64 => Value::F64(f64::from_bits(self.uint(8)?)),
            Marker::FixStr(n) => Value::Str(self.take(usize::from(n))?),
            m @ (Marker::Str8 | Marker::Str16 | Marker::Str32) => {
                let n = len(self, width(m))?;
                Value::Str(self.take(n)?)
            }
            m @ (Marker::Bin8 | Marker::Bin16 | Marker::Bin32) => {
                let n = len(self, width(m))?;
                Value::Bin(self.take(n)?)
            }
            Marker::FixExt1 => self.ext(1)?,
            Marker::FixExt2 => self.ext(2)?,
            Marker::FixExt4 => self.ext(4)?,
            Marker::FixExt8 => self.ext(8)?,
            Marker::FixExt16 => self.ext(16)?,
            m @ (Marker::Ext8 | Marker::Ext16 | Marker::Ext32) => {
                let n = len(self, width(m))?;
                self.ext(n)?
            }
            Marker::FixArray(n) => Value::Array(u32::from(n)),
            Marker::Array16 => Value::Array(self.uint(2)? as u32),
            Marker::Array32 => Value::Array(self.uint(4)? as u32),
            Marker::FixMap(n) => Value::Map(u32::from(n)),
            Marker::Map16 => Value::Map(self.uint(2)? as u32),
            Marker::Map32 => Value::Map(self.uint(4)? as u32),
            Marker::Reserved => return Err(invalid("the reserved byte 0xc1")),
        })
    }

    fn ext(&mut self, n: usize) -> Result<Value<'a>, FrameError> {
        let kind = self.take(1)?[0] as i8;
        Ok(Value::Ext(kind, self.take(n)?))
    }

    /// Skips what follows `head` (read just before): an array's or a map's items.
    pub(super) fn skip_items(&mut self, head: Value<'a>) -> Result<(), FrameError> {
        let mut left: u64 = match head {
            Value::Array(n) => u64::from(n),
            Value::Map(n) => 2 * u64::from(n),
            _ => 0,
        };
        while left > 0 {
            left -= 1;
            match self.value()? {
                Value::Array(n) => left += u64::from(n),
                Value::Map(n) => left += 2 * u64::from(n),
                _ => {}
            }
        }
        Ok(())
    }

    /// The next value whole: its head, and its encoding (the head and any items).
    pub fn field(&mut self) -> Result<Field<'a>, FrameError> {
        let start = self.pos;
        let value = self.value()?;
        self.skip_items(value)?;
        Ok(Field {
            value,
            raw: &self.buf[start..self.pos],
        })
    }
}

/// The width of the length that follows a str, bin or ext marker.
fn width(m: Marker) -> usize {
    match m {
        Marker::Str8 | Marker::Bin8 | Marker::Ext8 => 1,
        Marker::Str16 | Marker::Bin16 | Marker::Ext16 => 2,
        _ => 4,
    }
}

/// A value of a record: its head, and its whole encoding (to read an array's or a map's
/// items).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field<'a> {
    /// The head.
    pub value: Value<'a>,
    /// The whole value, encoded.
    pub raw: &'a [u8],
}

impl<'a> Field<'a> {
    /// The text of a string (or of bytes, as some drivers send), if it is UTF-8.
    pub fn text(&self) -> Option<&'a str> {
        match self.value {
            Value::Str(b) | Value::Bin(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// A record: a map whose keys are UTF-8 strings (checked when it was decoded), its
/// values still encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record<'a> {
    pairs: u32,
    /// The pairs, encoded (after the map's head).
    items: &'a [u8],
}

impl<'a> Record<'a> {
    /// The fields in the sender's order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a str, Field<'a>)> + use<'a> {
        // Checked at decode: the keys are UTF-8.
        self.keyed_fields()
            .filter_map(|(k, f)| Some((std::str::from_utf8(k).ok()?, f)))
    }

    /// [`Record::fields`] with each key as its bytes, for a caller that only compares
    /// them (the keys were checked once, when the record was decoded).
    pub fn keyed_fields(&self) -> impl Iterator<Item = (&'a [u8], Field<'a>)> + use<'a> {
        let mut r = Reader::new(self.items);
        (0..self.pairs).map_while(move |_| {
            // Checked at decode: string keys, whole values.
            let key = match r.value().ok()? {
                Value::Str(k) => k,
                _ => return None,
            };
            Some((key, r.field().ok()?))
        })
    }

    /// Reads a record (a map with string keys) from `r`.
    pub(super) fn read(r: &mut Reader<'a>) -> Result<Self, FrameError> {
        let Value::Map(pairs) = r.value()? else {
            return Err(invalid("the record is not a map"));
        };
        let start = r.pos;
        for _ in 0..pairs {
            match r.value()? {
                Value::Str(k) => {
                    utf8(k, "a record key")?;
                }
                _ => return Err(invalid("a record key is not a string")),
            }
            r.field()?;
        }
        Ok(Self {
            pairs,
            items: &r.buf[start..r.pos],
        })
    }
}

/// The JSON of an encoded value (for records that are not a driver's, and values that
/// are not text). Depth was bounded by the walk.
pub fn to_json(raw: &[u8]) -> serde_json::Value {
    json(&mut Reader::new(raw)).unwrap_or(serde_json::Value::Null)
}

fn json(r: &mut Reader<'_>) -> Result<serde_json::Value, FrameError> {
    use serde_json::Value as J;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(match r.value()? {
        Value::Nil | Value::Ext(..) => J::Null,
        Value::Bool(b) => J::Bool(b),
        Value::Uint(n) => J::from(n),
        Value::Int(n) => J::from(n),
        Value::F32(f) => serde_json::Number::from_f64(f64::from(f)).map_or(J::Null, J::Number),
        Value::F64(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        Value::Str(b) | Value::Bin(b) => J::String(text(b)),
        Value::Array(n) => J::Array((0..n).map(|_| json(r)).collect::<Result<_, _>>()?),
        Value::Map(n) => {
            let mut map = serde_json::Map::new();
            for _ in 0..n {
                let key = match json(r)? {
                    J::String(s) => s,
                    other => other.to_string(),
                };
                map.insert(key, json(r)?);
            }
            J::Object(map)
        }
    })
}
