//! CRC-32C (Castagnoli), for the framing of stored records: the `crc32c` crate, which uses
//! the CPU's CRC instructions where there are some and a table otherwise.

/// The CRC-32C of `data`.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C bit by bit, as its definition reads.
    fn reference(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn known_answers() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        // Every length and alignment the accelerated paths split differently.
        for start in 0..9 {
            for end in [start, start + 1, start + 7, start + 8, start + 63, start + 64, 333, 1024, 5000] {
                assert_eq!(crc32c(&data[start..end]), reference(&data[start..end]), "{start}..{end}");
            }
        }
    }
}
