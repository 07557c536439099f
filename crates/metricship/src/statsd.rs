//! The StatsD line parser: the whole protocol as senders use it.
//!
//! ```text
//! <name>[,<k>=<v>...]:<value>[:<value>...]|<type>[|@<rate>][|#<k>:<v>,...][|<ignored>...]
//! ```
//!
//! Types: `c` counter (negative values allowed), `g` gauge (a leading `+`/`-`
//! makes it a delta), `ms` timer, `h` histogram, `d` distribution, `s` set.
//! Tags come DogStatsD-style (`|#k:v,k2:v2`) or Influx-style (`name,k=v`).
//! Sections the daemon does not use (DogStatsD's `|c:` container id, `|T`
//! timestamp, `|e:` external data) are skipped rather than rejected, so a
//! newer client does not turn every line into an error.
//!
//! The parser borrows from the packet and never allocates; it is the only
//! code that sees sender bytes, so it is fuzzed (`fuzz/fuzz_targets/statsd_parse.rs`)
//! and property-tested: any input gives `Ok` or `Err`, never a panic.

/// What kind of metric a line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// `c`: a count, summed.
    Counter,
    /// `g`: a level, last value wins (or `+n`/`-n` deltas).
    Gauge,
    /// `ms`: a duration in milliseconds.
    Timer,
    /// `h`: a histogram sample.
    Histogram,
    /// `d`: a distribution sample (DogStatsD).
    Distribution,
    /// `s`: a set member; the count of distinct members per interval is reported.
    Set,
}

impl MetricType {
    /// The protocol's type code.
    pub fn code(self) -> &'static str {
        match self {
            MetricType::Counter => "c",
            MetricType::Gauge => "g",
            MetricType::Timer => "ms",
            MetricType::Histogram => "h",
            MetricType::Distribution => "d",
            MetricType::Set => "s",
        }
    }

    /// Whether samples are observations (timer, histogram, distribution).
    pub fn is_observer(self) -> bool {
        matches!(
            self,
            MetricType::Timer | MetricType::Histogram | MetricType::Distribution
        )
    }
}

/// Why a line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line is not UTF-8.
    #[error("line is not valid UTF-8")]
    NotUtf8,
    /// No `:` between name and value.
    #[error("missing ':' between name and value")]
    NoValue,
    /// The name is empty or has characters the protocol reserves.
    #[error("empty or invalid metric name")]
    BadName,
    /// No `|type` section.
    #[error("missing '|type'")]
    NoType,
    /// The type code is unknown.
    #[error("unknown metric type")]
    BadType,
    /// A value is not a finite number.
    #[error("value is not a finite number")]
    BadValue,
    /// The sample rate is not in (0, 1].
    #[error("sample rate must be in (0, 1]")]
    BadRate,
    /// A tag is malformed.
    #[error("malformed tag")]
    BadTag,
    /// A DogStatsD event or service check, which carry no metric.
    #[error("events and service checks are not metrics")]
    NotAMetric,
}

/// One parsed line, borrowing from the packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    /// The metric name, without Influx-style tags.
    pub name: &'a str,
    /// The type.
    pub kind: MetricType,
    /// The value text (one or more `:`-separated values; a set member as is). Validated.
    pub values: &'a str,
    /// The value when there is exactly one (0 for sets and multi-value lines).
    pub value: f64,
    /// Whether `values` holds several `:`-separated values.
    pub multi: bool,
    /// The sample rate, 1.0 when absent.
    pub rate: f64,
    /// Influx-style tags (`k=v,k2=v2`) from the name, when present.
    pub influx_tags: Option<&'a str>,
    /// DogStatsD tags (`k:v,k2:v2`), when present.
    pub dog_tags: Option<&'a str>,
}

/// A numeric sample of a line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// An absolute value (counter increment, gauge level, observation).
    Value(f64),
    /// A gauge change (`+n` / `-n`).
    Delta(f64),
}

impl<'a> Line<'a> {
    /// The numeric samples (not for sets). Values were validated by [`parse_line`].
    pub fn samples(&self) -> impl Iterator<Item = Sample> + 'a {
        let kind = self.kind;
        let to_sample = move |text: &str, n: f64| {
            if kind == MetricType::Gauge && (text.starts_with('+') || text.starts_with('-')) {
                Sample::Delta(n)
            } else {
                Sample::Value(n)
            }
        };
        // The common single value was parsed once, by parse_line.
        let single =
            (!self.multi && kind != MetricType::Set).then(|| to_sample(self.values, self.value));
        let multi = self
            .multi
            .then(|| self.values.split(':'))
            .into_iter()
            .flatten()
            .filter_map(move |v| Some(to_sample(v, parse_number(v)?)));
        single.into_iter().chain(multi)
    }

    /// The sample of a line with exactly one numeric value (the common case), without
    /// going through [`Line::samples`]; `None` for sets and multi-value lines.
    pub fn single_sample(&self) -> Option<Sample> {
        if self.multi || self.kind == MetricType::Set {
            return None;
        }
        let signed = matches!(self.values.as_bytes().first(), Some(b'+' | b'-'));
        Some(if self.kind == MetricType::Gauge && signed {
            Sample::Delta(self.value)
        } else {
            Sample::Value(self.value)
        })
    }

    /// All tags, Influx-style first, then DogStatsD; bare DogStatsD tags (`#flag`) are skipped.
    pub fn tags(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let influx = self
            .influx_tags
            .into_iter()
            .flat_map(|t| t.split(','))
            .filter_map(|kv| kv.split_once('='));
        let dog = self
            .dog_tags
            .into_iter()
            .flat_map(|t| t.split(','))
            .filter_map(|kv| kv.split_once(':'));
        influx.chain(dog).filter(|(k, _)| !k.is_empty())
    }

    /// The value of one tag, if present.
    pub fn tag(&self, key: &str) -> Option<&'a str> {
        self.tags().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Whether the line has any tags.
    pub fn has_tags(&self) -> bool {
        self.influx_tags.is_some() || self.dog_tags.is_some()
    }
}

fn parse_number(text: &str) -> Option<f64> {
    if let Some(n) = parse_simple_decimal(text.as_bytes()) {
        return Some(n);
    }
    // f64::from_str accepts "inf" and "NaN"; neither is a measurement.
    let first = text.as_bytes().first()?;
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return None;
    }
    let n: f64 = text.parse().ok()?;
    n.is_finite().then_some(n)
}

/// Powers of ten that are exact in an f64.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The common shapes of a StatsD value — `[+-]digits[.digits]` with at most 15 digits —
/// without the general float parser. The result is the same correctly rounded f64 as
/// `str::parse` gives (Clinger's fast path): the digits form an integer below 2^53 and the
/// divisor a power of ten below 10^16, both exact, and one IEEE division rounds correctly.
/// Anything else (exponents, more digits, a bare `.`) returns `None` for the general parser.
fn parse_simple_decimal(b: &[u8]) -> Option<f64> {
    let (negative, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    let mut mantissa: u64 = 0;
    let mut count = 0usize;
    let mut fraction: Option<usize> = None;
    for (i, &c) in digits.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                count += 1;
                if count > 15 {
                    return None;
                }
                mantissa = mantissa * 10 + u64::from(c - b'0');
            }
            b'.' if fraction.is_none() && i > 0 => fraction = Some(i + 1),
            _ => return None,
        }
    }
    if count == 0 {
        return None;
    }
    let scale = match fraction {
        // A trailing '.' ("5.") is left to the general parser.
        Some(start) if start == digits.len() => return None,
        Some(start) => digits.len() - start,
        None => 0,
    };
    let n = mantissa as f64 / POW10[scale];
    Some(if negative { -n } else { n })
}

/// Splits a packet that is valid UTF-8 into lines, like [`lines`]: a packet is checked
/// once rather than line by line.
pub fn str_lines(packet: &str) -> impl Iterator<Item = &str> {
    let mut rest = packet;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            // '\n' is ASCII, so both slices end on character boundaries.
            let line = match memchr::memchr(b'\n', rest.as_bytes()) {
                Some(i) => {
                    let line = &rest[..i];
                    rest = &rest[i + 1..];
                    line
                }
                None => std::mem::take(&mut rest),
            };
            let line = line.strip_suffix('\r').unwrap_or(line);
            if !line.is_empty() {
                return Some(line);
            }
        }
        None
    })
}

/// Splits a packet into lines (`\n`, optional `\r`), skipping empty ones.
pub fn lines(packet: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = packet;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            let line = match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let line = &rest[..i];
                    rest = &rest[i + 1..];
                    line
                }
                None => std::mem::take(&mut rest),
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                return Some(line);
            }
        }
        None
    })
}

/// Whether a metric name byte is one the protocol reserves (`|`, `#`, `@`), ASCII
/// whitespace or a control character. Branch-free, so a check of a whole name vectorises.
fn bad_name_byte(c: u8) -> bool {
    (c <= b' ') | (c == b'|') | (c == b'#') | (c == b'@')
}

/// Parses one line (without its newline).
///
/// One pass over the bytes for the usual `name:value|type` (the general cases — Influx
/// tags, several values, sample rates, DogStatsD tags — take the slower steps they need).
/// It accepts and rejects exactly what the straightforward `split`-based reading of the
/// grammar does; a property test holds it to that reference.
pub fn parse_line(raw: &[u8]) -> Result<Line<'_>, ParseError> {
    parse_str(std::str::from_utf8(raw).map_err(|_| ParseError::NotUtf8)?)
}

/// Parses one line already known to be UTF-8 (see [`str_lines`]).
pub fn parse_str(line: &str) -> Result<Line<'_>, ParseError> {
    let b = line.as_bytes();
    if b.starts_with(b"_e{") || b.starts_with(b"_sc|") {
        return Err(ParseError::NotAMetric);
    }
    // The head (name and Influx tags) ends at the first ':'; the name at the first ','.
    let colon = memchr::memchr(b':', b).ok_or(ParseError::NoValue)?;
    // One branch-free (vectorised) pass over the head for the usual name without
    // Influx tags; a head with a ',' looks again at the part before it.
    let (any_comma, any_bad) = b[..colon].iter().fold((false, false), |(comma, bad), &c| {
        (comma | (c == b','), bad | bad_name_byte(c))
    });
    let (comma, bad_name) = if any_comma {
        let comma = memchr::memchr(b',', &b[..colon]);
        let name = &b[..comma.unwrap_or(colon)];
        (
            comma,
            name.iter().fold(false, |bad, &c| bad | bad_name_byte(c)),
        )
    } else {
        (None, any_bad)
    };
    let name_end = comma.unwrap_or(colon);
    if name_end == 0 || bad_name {
        return Err(ParseError::BadName);
    }
    let name = &line[..name_end];
    let influx_tags = comma.map(|c| &line[c + 1..colon]);
    if let Some(tags) = influx_tags
        && (tags.is_empty() || tags.split(',').any(|kv| !valid_tag(kv, '=')))
    {
        return Err(ParseError::BadTag);
    }
    let rest = &line[colon + 1..];
    let rb = rest.as_bytes();
    // Values end at the first '|'; the type at the next one (or the end).
    // Values are short ("1", "12.5"): a plain loop beats memchr's set-up.
    let bar = rb
        .iter()
        .position(|&c| c == b'|')
        .ok_or(ParseError::NoType)?;
    let values = &rest[..bar];
    let after_type = &rest[bar + 1..];
    let type_end = after_type
        .bytes()
        .position(|c| c == b'|')
        .unwrap_or(after_type.len());
    let kind = match &after_type.as_bytes()[..type_end] {
        b"c" => MetricType::Counter,
        b"g" => MetricType::Gauge,
        b"ms" => MetricType::Timer,
        b"h" => MetricType::Histogram,
        b"d" => MetricType::Distribution,
        b"s" => MetricType::Set,
        _ => return Err(ParseError::BadType),
    };
    let (value, multi) = parse_values(kind, values, parse_number)?;
    let sections = after_type
        .get(type_end + 1..)
        .map(|s| s.split('|'))
        .into_iter()
        .flatten();
    let (rate, dog_tags) = parse_sections(sections, parse_number)?;
    Ok(Line {
        name,
        kind,
        values,
        value,
        multi,
        rate,
        influx_tags,
        dog_tags,
    })
}

/// Checks the value text of a line of type `kind`: `(the single value, whether there
/// are several)`. Sets take any text without control characters.
fn parse_values(
    kind: MetricType,
    values: &str,
    number: fn(&str) -> Option<f64>,
) -> Result<(f64, bool), ParseError> {
    if values.is_empty() {
        return Err(ParseError::BadValue);
    }
    let multi = kind != MetricType::Set && values.bytes().any(|c| c == b':');
    if kind == MetricType::Set {
        if values.bytes().any(|b| b < 0x20) {
            return Err(ParseError::BadValue);
        }
    } else if multi {
        if values.split(':').any(|v| number(v).is_none()) {
            return Err(ParseError::BadValue);
        }
    } else {
        return Ok((number(values).ok_or(ParseError::BadValue)?, false));
    }
    Ok((0.0, multi))
}

/// Reads the sections after the type: `(sample rate, DogStatsD tags)`.
fn parse_sections<'a>(
    sections: impl Iterator<Item = &'a str>,
    number: fn(&str) -> Option<f64>,
) -> Result<(f64, Option<&'a str>), ParseError> {
    let mut rate = 1.0;
    let mut dog_tags = None;
    for section in sections {
        if let Some(r) = section.strip_prefix('@') {
            rate = number(r).ok_or(ParseError::BadRate)?;
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(ParseError::BadRate);
            }
        } else if let Some(t) = section.strip_prefix('#') {
            if t.split(',')
                .any(|kv| kv.is_empty() || kv.bytes().any(|b| b < 0x20))
            {
                return Err(ParseError::BadTag);
            }
            dog_tags = Some(t);
        }
        // Other sections (container id, timestamp, external data) carry nothing we use.
    }
    Ok((rate, dog_tags))
}

fn valid_tag(kv: &str, sep: char) -> bool {
    match kv.split_once(sep) {
        Some((k, v)) => !k.is_empty() && !v.is_empty() && !kv.bytes().any(|b| b < 0x20),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Line<'_> {
        parse_line(s.as_bytes()).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn every_type() {
        for (text, kind) in [
            ("a.b:1|c", MetricType::Counter),
            ("a.b:1|g", MetricType::Gauge),
            ("a.b:1|ms", MetricType::Timer),
            ("a.b:1|h", MetricType::Histogram),
            ("a.b:1|d", MetricType::Distribution),
            ("a.b:xyz|s", MetricType::Set),
        ] {
            let l = p(text);
            assert_eq!(l.kind, kind, "{text}");
            assert_eq!(l.name, "a.b");
            assert_eq!(l.rate, 1.0);
        }
        assert_eq!(p("u:alice|s").values, "alice");
    }

    #[test]
    fn counters_may_be_negative_and_fractional() {
        let l = p("airflow.x:-3.5|c");
        assert_eq!(l.samples().collect::<Vec<_>>(), vec![Sample::Value(-3.5)]);
        let l = p("airflow.x:+2|c");
        assert_eq!(l.samples().collect::<Vec<_>>(), vec![Sample::Value(2.0)]);
    }

    #[test]
    fn gauge_deltas_and_absolutes() {
        assert_eq!(
            p("g:+4|g").samples().collect::<Vec<_>>(),
            vec![Sample::Delta(4.0)]
        );
        assert_eq!(
            p("g:-4|g").samples().collect::<Vec<_>>(),
            vec![Sample::Delta(-4.0)]
        );
        assert_eq!(
            p("g:4|g").samples().collect::<Vec<_>>(),
            vec![Sample::Value(4.0)]
        );
    }

    #[test]
    fn sample_rates() {
        assert_eq!(p("a:1|c|@0.1").rate, 0.1);
        assert_eq!(p("a:12|ms|@0.5|#k:v").rate, 0.5);
        for bad in [
            "a:1|c|@0",
            "a:1|c|@1.5",
            "a:1|c|@-1",
            "a:1|c|@x",
            "a:1|c|@nan",
        ] {
            assert_eq!(
                parse_line(bad.as_bytes()),
                Err(ParseError::BadRate),
                "{bad}"
            );
        }
    }

    #[test]
    fn dogstatsd_and_influx_tags() {
        let l = p("pool.queued_slots:3|g|#pool_name:default_pool,env:prod");
        assert_eq!(l.tag("pool_name"), Some("default_pool"));
        assert_eq!(l.tag("env"), Some("prod"));
        let l = p("pool.queued_slots,pool_name=etl,env=dev:7|g");
        assert_eq!(l.name, "pool.queued_slots");
        assert_eq!(l.tag("pool_name"), Some("etl"));
        assert_eq!(l.tags().count(), 2);
        // Bare DogStatsD tags carry no value: skipped, not an error.
        let l = p("a:1|c|#flag,k:v");
        assert_eq!(l.tags().collect::<Vec<_>>(), vec![("k", "v")]);
        // Tag values may contain ':' (DogStatsD splits on the first one).
        assert_eq!(p("a:1|c|#url:http://x").tag("url"), Some("http://x"));
    }

    #[test]
    fn multiple_values_and_ignored_sections() {
        let l = p("lat:1:2:3|d|#a:b|c:container123|T1700000000");
        assert_eq!(l.samples().count(), 3);
        assert_eq!(l.tag("a"), Some("b"));
    }

    #[test]
    fn several_lines_per_packet() {
        let packet = b"a:1|c\nb:2|g\r\n\nc:3|ms\n";
        let parsed: Vec<_> = lines(packet).map(|l| parse_line(l).unwrap().name).collect();
        assert_eq!(parsed, vec!["a", "b", "c"]);
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"novalue", ParseError::NoValue),
            (b":1|c", ParseError::BadName),
            (b"a b:1|c", ParseError::BadName),
            (b"a:1", ParseError::NoType),
            (b"a:1|x", ParseError::BadType),
            (b"a:|c", ParseError::BadValue),
            (b"a:abc|c", ParseError::BadValue),
            (b"a:inf|g", ParseError::BadValue),
            (b"a:NaN|ms", ParseError::BadValue),
            (b"a:1::2|ms", ParseError::BadValue),
            (b"a,:1|c", ParseError::BadTag),
            (b"a,k:1|c", ParseError::BadTag),
            (b"a:1|c|#", ParseError::BadTag),
            (b"\xff\xfe:1|c", ParseError::NotUtf8),
            (b"_e{5,4}:title|text", ParseError::NotAMetric),
            (b"_sc|name|0", ParseError::NotAMetric),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse_line(raw).err(),
                Some(*want),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    /// A line as the reference model reads it: (name, kind, values), (value, multi,
    /// rate), (Influx tags, DogStatsD tags).
    type Reference<'a> = (
        (&'a str, MetricType, &'a str),
        (f64, bool, f64),
        (Option<&'a str>, Option<&'a str>),
    );

    /// The straightforward reading of the grammar (the parser before it was made
    /// single-pass), kept as the model the fast parser must agree with.
    fn reference_parse_line(raw: &[u8]) -> Result<Reference<'_>, ParseError> {
        fn reference_number(text: &str) -> Option<f64> {
            let first = text.as_bytes().first()?;
            if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
                return None;
            }
            let n: f64 = text.parse().ok()?;
            n.is_finite().then_some(n)
        }
        let line = std::str::from_utf8(raw).map_err(|_| ParseError::NotUtf8)?;
        if line.starts_with("_e{") || line.starts_with("_sc|") {
            return Err(ParseError::NotAMetric);
        }
        let (head, rest) = line.split_once(':').ok_or(ParseError::NoValue)?;
        let (name, influx_tags) = match head.split_once(',') {
            Some((n, t)) => (n, Some(t)),
            None => (head, None),
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| matches!(b, b'|' | b'#' | b'@') || b.is_ascii_whitespace() || b < 0x20)
        {
            return Err(ParseError::BadName);
        }
        if let Some(tags) = influx_tags
            && (tags.is_empty() || tags.split(',').any(|kv| !valid_tag(kv, '=')))
        {
            return Err(ParseError::BadTag);
        }
        let mut sections = rest.split('|');
        let values = sections.next().unwrap_or("");
        let kind = match sections.next().ok_or(ParseError::NoType)? {
            "c" => MetricType::Counter,
            "g" => MetricType::Gauge,
            "ms" => MetricType::Timer,
            "h" => MetricType::Histogram,
            "d" => MetricType::Distribution,
            "s" => MetricType::Set,
            _ => return Err(ParseError::BadType),
        };
        // The value and section checks are shared: what changed is the splitting and
        // the numbers, which this model does the plain way.
        let (value, multi) = parse_values(kind, values, reference_number)?;
        let (rate, dog_tags) = parse_sections(sections, reference_number)?;
        let head = (name, kind, values);
        let numbers = (value, multi, rate);
        Ok((head, numbers, (influx_tags, dog_tags)))
    }

    /// The same result, comparing floats by their bits (so -0.0 and 0.0 differ).
    fn same(a: &Result<Line<'_>, ParseError>, b: &Result<Reference<'_>, ParseError>) -> bool {
        match (a, b) {
            (Ok(a), Ok(((name, kind, values), (value, multi, rate), (influx, dog)))) => {
                a.value.to_bits() == value.to_bits()
                    && a.rate.to_bits() == rate.to_bits()
                    && (a.name, a.kind, a.values, a.multi, a.influx_tags, a.dog_tags)
                        == (*name, *kind, *values, *multi, *influx, *dog)
            }
            (Err(a), Err(b)) => a == b,
            _ => false,
        }
    }

    fn reference_lines(packet: &[u8]) -> Vec<&[u8]> {
        packet
            .split(|b| *b == b'\n')
            .filter_map(|l| {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                (!l.is_empty()).then_some(l)
            })
            .collect()
    }

    #[test]
    fn fast_number_path_agrees_with_the_float_parser() {
        for text in [
            "0",
            "-0",
            "+0",
            "1",
            "-1",
            "+2",
            "12.5",
            "-3.25",
            "0.1",
            "0.3",
            "123456789012345",
            "1234567890123456",
            "99999999999999.9",
            "0.000000000000001",
            "1.",
            ".5",
            "-.5",
            "5e3",
            "1.2.3",
            "-",
            "+",
            ".",
            "",
            "00012",
            "7.0000000000000",
            // More digits than a u64 holds (found by the property test below: an overflow).
            "184467440737.09600000",
            "18446744073709551616",
            "-99999999999999999999.5",
        ] {
            let fast = parse_number(text).map(f64::to_bits);
            let general = text
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .filter(|_| {
                    text.as_bytes()
                        .first()
                        .is_some_and(|c| c.is_ascii_digit() || b"+-.".contains(c))
                })
                .map(f64::to_bits);
            assert_eq!(fast, general, "{text:?}");
        }
    }

    fn line_strategy() -> impl Strategy<Value = String> {
        // Lines built from the grammar's pieces, so that most parse and the rest fail late.
        let piece = prop_oneof![
            "[a-z._]{1,12}",
            Just(",".to_string()),
            Just(":".to_string()),
            Just("|".to_string()),
            Just("=".to_string()),
            Just("#".to_string()),
            Just("@".to_string()),
            "[+-]?[0-9]{0,17}(\\.[0-9]{0,17})?",
            prop_oneof![
                Just("c"),
                Just("g"),
                Just("ms"),
                Just("h"),
                Just("d"),
                Just("s")
            ]
            .prop_map(String::from),
            "[ \\t\\x00-\\x1f\\x7f-\\u{ff}]",
        ];
        proptest::collection::vec(piece, 0..14).prop_map(|p| p.concat())
    }

    fn kind_strategy() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("c"), Just("g"), Just("ms"), Just("h"), Just("d")]
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for line in lines(&bytes) {
                if let Ok(l) = parse_line(line) {
                    // Whatever parses must be usable without panics.
                    let _ = l.samples().count();
                    let _ = l.tags().count();
                }
            }
        }

        #[test]
        fn agrees_with_the_reference_parser_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            prop_assert_eq!(lines(&bytes).collect::<Vec<_>>(), reference_lines(&bytes));
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let split: Vec<&[u8]> = str_lines(text).map(str::as_bytes).collect();
                prop_assert_eq!(split, reference_lines(&bytes));
            }
            for line in lines(&bytes) {
                prop_assert!(same(&parse_line(line), &reference_parse_line(line)));
            }
        }

        #[test]
        fn agrees_with_the_reference_parser_on_grammar_pieces(text in line_strategy()) {
            let (fast, reference) = (parse_line(text.as_bytes()), reference_parse_line(text.as_bytes()));
            prop_assert!(same(&fast, &reference), "{:?}: {:?} vs {:?}", text, fast, reference);
        }

        #[test]
        fn decimal_values_parse_exactly_like_str_parse(
            int in 0u64..1_000_000_000_000_000,
            frac in proptest::option::of("[0-9]{1,15}"),
            sign in prop_oneof![Just(""), Just("+"), Just("-")],
        ) {
            let text = match &frac {
                Some(f) => format!("{sign}{int}.{f}"),
                None => format!("{sign}{int}"),
            };
            let want: f64 = text.parse().unwrap();
            prop_assert_eq!(parse_number(&text).map(f64::to_bits), Some(want.to_bits()), "{}", text);
        }

        #[test]
        fn well_formed_lines_round_trip(
            name in "[a-z][a-z0-9_.]{0,40}",
            value in -1e9f64..1e9,
            kind in kind_strategy(),
            rate in prop_oneof![Just(None), (0.001f64..=1.0).prop_map(Some)],
            tags in proptest::collection::vec(("[a-z][a-z_]{0,8}", "[a-z0-9_.]{1,10}"), 0..4),
        ) {
            let mut text = format!("{name}:{value}|{kind}");
            if let Some(r) = rate {
                text.push_str(&format!("|@{r}"));
            }
            if !tags.is_empty() {
                let t: Vec<String> = tags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                text.push_str(&format!("|#{}", t.join(",")));
            }
            let l = parse_line(text.as_bytes()).unwrap();
            prop_assert_eq!(l.name, name.as_str());
            prop_assert_eq!(l.kind.code(), kind);
            prop_assert_eq!(l.rate, rate.unwrap_or(1.0));
            let samples: Vec<_> = l.samples().collect();
            prop_assert_eq!(samples.len(), 1);
            let got = match samples[0] { Sample::Value(v) | Sample::Delta(v) => v };
            prop_assert_eq!(got, value);
            let parsed_tags: Vec<(String, String)> =
                l.tags().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            prop_assert_eq!(parsed_tags, tags);
        }

        #[test]
        fn influx_tags_match_dogstatsd_tags(
            name in "[a-z][a-z0-9_.]{0,20}",
            tags in proptest::collection::vec(("[a-z][a-z_]{0,8}", "[a-z0-9_]{1,10}"), 1..4),
        ) {
            let influx: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let dog: Vec<String> = tags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            let a = format!("{name},{}:1|c", influx.join(","));
            let b = format!("{name}:1|c|#{}", dog.join(","));
            let la = parse_line(a.as_bytes()).unwrap();
            let lb = parse_line(b.as_bytes()).unwrap();
            prop_assert_eq!(la.name, lb.name);
            prop_assert_eq!(la.tags().collect::<Vec<_>>(), lb.tags().collect::<Vec<_>>());
        }

        #[test]
        fn gauge_sign_decides_delta(v in 0.0f64..1e6, sign in prop_oneof![Just(""), Just("+"), Just("-")]) {
            let text = format!("g:{sign}{v}|g");
            let l = parse_line(text.as_bytes()).unwrap();
            let s: Vec<_> = l.samples().collect();
            match sign {
                "" => prop_assert_eq!(s, vec![Sample::Value(v)]),
                "+" => prop_assert_eq!(s, vec![Sample::Delta(v)]),
                _ => prop_assert_eq!(s, vec![Sample::Delta(-v)]),
            }
        }

        #[test]
        fn truncations_of_valid_lines_never_panic(cut in 0usize..40) {
            let text = b"airflow.pool.queued_slots,pool=a:12.5|g|@0.5|#k:v";
            let _ = parse_line(&text[..cut.min(text.len())]);
        }
    }
}
