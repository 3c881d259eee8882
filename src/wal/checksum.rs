//! The WAL checksum of SQLite's file format (section 4.3 of "Database File Format"):
//! over 32-bit word pairs, `s0 += x0 + s1; s1 += x1 + s0`, with words read big-endian when the
//! magic number's low bit is set and little-endian otherwise. Never the host byte order.

/// A running checksum pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checksum(pub u32, pub u32);

/// Extend `seed` over `data` (its length must be a multiple of 8).
pub fn checksum(big_endian: bool, data: &[u8], seed: Checksum) -> Checksum {
    debug_assert!(
        data.len().is_multiple_of(8),
        "WAL checksum input must be 8-byte aligned"
    );
    let Checksum(mut s0, mut s1) = seed;
    for w in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (
                u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
                u32::from_be_bytes([w[4], w[5], w[6], w[7]]),
            )
        } else {
            (
                u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
                u32::from_le_bytes([w[4], w[5], w[6], w[7]]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    Checksum(s0, s1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_matters_and_is_explicit() {
        let data = [1u8, 0, 0, 0, 2, 0, 0, 0];
        let cases = [
            (false, Checksum(0, 0), Checksum(1, 3)),
            (
                true,
                Checksum(0, 0),
                Checksum(1 << 24, (2 << 24) + (1 << 24)),
            ),
            (false, Checksum(5, 7), Checksum(13, 22)),
        ];
        for (be, seed, want) in cases {
            assert_eq!(checksum(be, &data, seed), want, "be={be} seed={seed:?}");
        }
    }
}
