//! Which file is which: device and inode plus a fingerprint of the first line, so a
//! reused inode is not taken for the old file and a copytruncate copy continues its
//! original.

use super::*;

/// The fingerprint of a file that has no complete first line: all of its first bytes.
pub(super) fn whole_fingerprint(file: &File, len: u64) -> Option<(u64, u32)> {
    let mut head = [0u8; FINGERPRINT_BYTES];
    let want = (len as usize).min(FINGERPRINT_BYTES);
    let n = file.read_at(&mut head[..want], 0).ok()?;
    (n > 0).then(|| (record::fnv1a(0, &head[..n]), n as u32))
}

pub(super) fn fingerprint(file: &File, len: u64) -> Option<(u64, u32)> {
    let mut head = [0u8; FINGERPRINT_BYTES];
    let want = (len as usize).min(FINGERPRINT_BYTES);
    let n = file.read_at(&mut head[..want], 0).ok()?;
    let head = &head[..n];
    let cover = match head.iter().position(|&b| b == b'\n') {
        Some(nl) => nl + 1,
        None if n == FINGERPRINT_BYTES => n,
        // Neither a whole first line nor 256 bytes yet: wait until the file grows.
        None => return None,
    };
    Some((record::fnv1a(0, &head[..cover]), cover as u32))
}

/// Whether the file still starts with the fingerprinted bytes.
pub(super) fn same_start(file: &File, fp: u64, fp_len: u32) -> bool {
    let mut head = [0u8; FINGERPRINT_BYTES];
    let want = (fp_len as usize).min(FINGERPRINT_BYTES);
    matches!(file.read_at(&mut head[..want], 0), Ok(n) if n == want && record::fnv1a(0, &head[..n]) == fp)
}

pub(super) fn stream_id(dev: u64, ino: u64, fp: u64, generation: u32) -> u64 {
    let mut bytes = Vec::with_capacity(28);
    bytes.extend_from_slice(&dev.to_le_bytes());
    bytes.extend_from_slice(&ino.to_le_bytes());
    bytes.extend_from_slice(&fp.to_le_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
    record::fnv1a(0x006c_6f67_7368_6970, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_waits_for_a_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"partial").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(fingerprint(&f, 7), None);
        std::fs::write(&p, b"first\nsecond\n").unwrap();
        let f = File::open(&p).unwrap();
        let (_, len) = fingerprint(&f, 13).unwrap();
        assert_eq!(len, 6);
    }
}
