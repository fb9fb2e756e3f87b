//! Whole numbers in JSON bodies. JSON Schema's `integer` includes `66.0`, so a client generated
//! from the OpenAPI document may send one: it is taken as 66 (`66.5`, `-1` and `1e300` are not
//! whole non-negative numbers that fit, and are refused).

use serde::Deserializer;
use serde::de::{Error, Visitor};
use std::fmt;

/// Largest float that is still exact as a whole number (2^53).
const EXACT: f64 = 9_007_199_254_740_992.0;

struct Whole;

impl Visitor<'_> for Whole {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number, 0 or more")
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom("a whole number, 0 or more"))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
        if v.fract() == 0.0 && (0.0..=EXACT).contains(&v) {
            Ok(v as u64)
        } else {
            Err(E::custom("a whole number, 0 or more"))
        }
    }
}

/// `#[serde(deserialize_with = "whole::u64")]`.
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(Whole)
}

/// `#[serde(default, deserialize_with = "whole::option_u8")]`: `null` or a whole number to 255.
pub fn option_u8<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    struct Maybe;
    impl<'de> Visitor<'de> for Maybe {
        type Value = Option<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("null or a whole number")
        }
        fn visit_none<E: Error>(self) -> Result<Option<u8>, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Option<u8>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u8>, D::Error> {
            let n = u64(d)?;
            u8::try_from(n)
                .map(Some)
                .map_err(|_| D::Error::custom("a whole number to 255"))
        }
    }
    d.deserialize_option(Maybe)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct T {
        #[serde(deserialize_with = "super::u64")]
        n: u64,
        #[serde(default, deserialize_with = "super::option_u8")]
        d: Option<u8>,
    }

    #[test]
    fn whole_numbers_however_written() {
        let t = |s: &str| serde_json::from_str::<T>(s);
        assert_eq!(t(r#"{"n": 66.0}"#).unwrap(), T { n: 66, d: None });
        assert_eq!(
            t(r#"{"n": 7, "d": 31.0}"#).unwrap(),
            T { n: 7, d: Some(31) }
        );
        assert_eq!(t(r#"{"n": 7, "d": null}"#).unwrap().d, None);
        assert_eq!(t(r#"{"n": 18446744073709551615}"#).unwrap().n, u64::MAX);
        for bad in [
            r#"{"n": 66.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": -1.0}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": "1"}"#,
            r#"{"n": 1, "d": 256}"#,
            r#"{"n": 1, "d": 1.5}"#,
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }
}
