//! The byte search the meter and the rewriter share: eight bytes at a time, a word without what
//! is looked for passed over with a few arithmetic operations (no crate for what these lines
//! do). Newlines, quotes and backslashes are what long lines of model servers' answers are
//! searched for.

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The first position of a byte equal to `a` or `b` in `haystack` (the same byte twice to look
/// for one).
#[inline]
pub(super) fn find_either(a: u8, b: u8, haystack: &[u8]) -> Option<usize> {
    let (spread_a, spread_b) = (ONES * u64::from(a), ONES * u64::from(b));
    let mut at = 0;
    for word in haystack.chunks_exact(8) {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let word = u64::from_ne_bytes(word);
        // Zero in a byte of `x` where `a` is (of `y` where `b` is); the expression is non-zero
        // exactly when one byte of either is zero.
        let (x, y) = (word ^ spread_a, word ^ spread_b);
        if (x.wrapping_sub(ONES) & !x | y.wrapping_sub(ONES) & !y) & HIGHS != 0 {
            break;
        }
        at += 8;
    }
    haystack[at..]
        .iter()
        .position(|c| *c == a || *c == b)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_either_byte_is_found_at_any_offset_and_nothing_else_stops_the_search() {
        for len in 0..40 {
            for at in 0..len {
                for (first, second) in [(b'"', b'\\'), (b'\\', b'"'), (b'\n', b'\n')] {
                    let mut haystack = vec![b'a'; len];
                    haystack[at] = first;
                    if at + 3 < len {
                        haystack[at + 3] = second;
                    }
                    let found = find_either(b'"', b'\\', &haystack);
                    let expected = match first {
                        b'\n' => None,
                        _ => Some(at),
                    };
                    assert_eq!(found, expected, "{len} {at} {first}");
                    assert_eq!(find_either(first, first, &haystack), Some(at), "{len} {at}");
                }
            }
            assert_eq!(find_either(b'"', b'\\', &vec![b'a'; len]), None);
        }
        // Bytes around the needles' values do not fool the word test.
        let near: Vec<u8> = (0..=255u8).filter(|b| !matches!(b, b'"' | b'\\')).collect();
        assert_eq!(find_either(b'"', b'\\', &near), None);
    }
}
