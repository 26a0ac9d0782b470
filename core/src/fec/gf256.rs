//! Arithmetic in GF(2⁸) with the polynomial x⁸+x⁴+x³+x²+1 (0x11D) and generator 2, the field nanors and
//! therefore Moonlight use (protocol notes §6.4). All tables are built at compile time, so nothing here
//! allocates or initialises at run time.

/// The reduction polynomial, with the x⁸ bit.
pub const POLYNOMIAL: u16 = 0x11D;

/// Multiplies by shifting and reducing: the slow definition every table below is built from.
const fn mul_by_definition(a: u8, b: u8) -> u8 {
    let mut a = a as u16;
    let mut b = b;
    let mut product: u16 = 0;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        a <<= 1;
        if a & 0x100 != 0 {
            a ^= POLYNOMIAL;
        }
        b >>= 1;
    }
    product as u8
}

/// `EXP[i] = 2^i`, doubled in length so that `EXP[log a + log b]` needs no reduction mod 255.
static EXP: [u8; 510] = {
    let mut table = [0u8; 510];
    let mut value: u8 = 1;
    let mut i = 0;
    while i < 510 {
        table[i] = value;
        value = mul_by_definition(value, 2);
        i += 1;
    }
    table
};

/// `LOG[a]` for a ≠ 0 (`LOG[0]` is unused and 0).
static LOG: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut value: u8 = 1;
    let mut i = 0;
    while i < 255 {
        table[value as usize] = i as u8;
        value = mul_by_definition(value, 2);
        i += 1;
    }
    table
};

/// The full product table, `MUL_TABLE[a][b] = a·b` (64 KiB): the portable kernel looks up one row per
/// coefficient, which is the fastest scalar form.
pub(crate) static MUL_TABLE: [[u8; 256]; 256] = {
    let mut table = [[0u8; 256]; 256];
    let mut a = 0;
    while a < 256 {
        let mut b = 0;
        while b < 256 {
            table[a][b] = mul_by_definition(a as u8, b as u8);
            b += 1;
        }
        a += 1;
    }
    table
};

/// `a · b` in GF(2⁸)/0x11D.
#[inline]
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        EXP[usize::from(LOG[usize::from(a)]) + usize::from(LOG[usize::from(b)])]
    }
}

/// The multiplicative inverse `exp[255 − log a]`, or `None` for 0, which has none.
#[inline]
pub fn inv(a: u8) -> Option<u8> {
    if a == 0 {
        None
    } else {
        Some(EXP[255 - usize::from(LOG[usize::from(a)])])
    }
}

/// `2^i`.
#[inline]
pub fn exp(i: u8) -> u8 {
    EXP[usize::from(i)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_agree_with_the_definition_for_every_pair() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let expected = mul_by_definition(a, b);
                assert_eq!(mul(a, b), expected, "{a}·{b}");
                assert_eq!(MUL_TABLE[usize::from(a)][usize::from(b)], expected);
            }
        }
    }

    #[test]
    fn every_nonzero_element_has_an_inverse_and_zero_has_none() {
        assert_eq!(inv(0), None);
        for a in 1..=255u8 {
            let inverse = inv(a).unwrap();
            assert_eq!(mul(a, inverse), 1, "a = {a}");
        }
    }

    #[test]
    fn two_generates_the_whole_multiplicative_group() {
        let mut seen = [false; 256];
        for i in 0..255u8 {
            seen[usize::from(exp(i))] = true;
        }
        assert!(!seen[0]);
        assert!(seen[1..].iter().all(|&s| s));
        // x⁸ = x⁴+x³+x²+1 is exactly what makes the polynomial 0x11D.
        assert_eq!(exp(8), 0x1D);
    }
}
