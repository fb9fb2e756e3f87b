//! The input rules as regular expressions, for API documents (JSON Schema `pattern`s: portable
//! ECMA-262 syntax that Rust's `regex` and Python's `re` read the same way). Each is tested
//! here against the rule it describes, so a client generated from the document sends only
//! what keygate accepts.

use crate::time::Lifetime;

/// A name, owner or reason: at least one character that is not white space, and no control
/// characters (the length limit is the field's own `maxLength`).
pub const TEXT: &str = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$";

/// A scope: segments of `a-z 0-9 _ - .` joined by `:`, optionally ending in `:*`, or `*`
/// alone (at most [`MAX_SCOPE_LEN`](crate::scope::MAX_SCOPE_LEN) characters).
pub const SCOPE: &str = r"^(\*|[a-z0-9_.\-]+(:[a-z0-9_.\-]+)*(:\*)?)$";

/// A key id: `key_` and a ULID.
pub const KEY_ID: &str = "^key_[0-7][0-9A-HJKMNP-TV-Z]{25}$";

/// A key prefix (see [`Prefix::new`](crate::Prefix::new)).
pub const PREFIX: &str = "^[a-z][a-z0-9_]{0,31}$";

/// A lifetime (`90d`, `12h`, ...): a whole number from 1 up to [`Lifetime::MAX`] in its unit,
/// without leading zeros.
pub fn lifetime() -> String {
    format!("^{}$", lifetime_alternatives())
}

/// A quiet period (`retire_when_switched`): a [`lifetime`] in minutes or longer units, so at
/// least `1m` (see [`parse_quiet`](crate::switch::parse_quiet)).
pub fn quiet() -> String {
    format!("^{}$", alternatives(&UNITS[1..]))
}

/// A grace period: `0` (with or without a unit) or a [`lifetime`].
pub fn grace() -> String {
    format!("^(0[smhdw]?|{})$", lifetime_alternatives())
}

/// A rate limit's name (`LimitName`): 1–32 of `a-z 0-9 _ -`.
pub const LIMIT_NAME: &str = "^[a-z0-9_-]{1,32}$";

/// A rate limit's window (`Window`): a whole number and a unit, from `1s` to `31d`.
pub fn window() -> String {
    let most = u64::from(crate::limits::MAX_WINDOW_SECS);
    let parts: Vec<String> = [
        ('s', 1),
        ('m', 60),
        ('h', 3_600),
        ('d', 86_400),
        ('w', 604_800),
    ]
    .iter()
    .map(|(unit, secs)| format!("({}){unit}", one_to(most / secs)))
    .collect();
    format!("^({})$", parts.join("|"))
}
/// The units of a lifetime, shortest first.
const UNITS: [(char, i64); 5] = [
    ('s', 1_000),
    ('m', 60_000),
    ('h', 3_600_000),
    ('d', 86_400_000),
    ('w', 7 * 86_400_000),
];

fn lifetime_alternatives() -> String {
    alternatives(&UNITS)
}

fn alternatives(units: &[(char, i64)]) -> String {
    let parts: Vec<String> = units
        .iter()
        .map(|(unit, ms)| {
            let most = (Lifetime::MAX.as_ms() / ms) as u64;
            format!("({}){unit}", one_to(most))
        })
        .collect();
    format!("({})", parts.join("|"))
}

/// A regular expression matching the decimal numbers 1..=`n`, without leading zeros.
fn one_to(n: u64) -> String {
    let digits: Vec<u8> = n.to_string().bytes().map(|b| b - b'0').collect();
    let k = digits.len();
    let mut alternatives = Vec::new();
    // Fewer digits than n: anything.
    if k > 1 {
        alternatives.push(format!("[1-9][0-9]{{0,{}}}", k - 2));
    }
    // As many digits: equal to n up to position i, smaller at i, anything after.
    for i in 0..k {
        let low = if i == 0 { 1 } else { 0 };
        if digits[i] > low {
            let prefix: String = digits[..i].iter().map(|d| char::from(b'0' + d)).collect();
            let class = if digits[i] - 1 == low {
                format!("{low}")
            } else {
                format!("[{low}-{}]", digits[i] - 1)
            };
            let rest = k - i - 1;
            let tail = if rest == 0 {
                String::new()
            } else {
                format!("[0-9]{{{rest}}}")
            };
            alternatives.push(format!("{prefix}{class}{tail}"));
        }
    }
    alternatives.push(n.to_string());
    alternatives.join("|")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use regex::Regex;

    use super::*;
    use crate::record::{KeySpec, RecordError, issue};
    use crate::scope::check_scope;
    use crate::{Prefix, Timestamp, parse_grace};

    fn is_match(pattern: &str, text: &str) -> bool {
        Regex::new(pattern).unwrap().is_match(text)
    }

    fn name_ok(text: &str) -> bool {
        let spec = KeySpec {
            name: text.to_owned(),
            ..KeySpec::default()
        };
        match issue(
            spec,
            &Prefix::default(),
            Timestamp::from_unix_ms(0).unwrap(),
        ) {
            Ok(_) => true,
            Err(RecordError::Field { field: "name", .. }) => false,
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn one_to_matches_exactly_one_to_n() {
        for n in [1u64, 7, 9, 10, 36, 100, 365, 5214, 36_500] {
            let re = Regex::new(&format!("^({})$", one_to(n))).unwrap();
            for i in 0..=n + 20 {
                assert_eq!(
                    re.is_match(&i.to_string()),
                    (1..=n).contains(&i),
                    "{i} of 1..={n}"
                );
            }
            assert!(!re.is_match(&format!("0{n}")), "no leading zero");
        }
    }

    #[test]
    fn windows_and_limit_names_match_their_rules() {
        use crate::limits::{LimitName, Window};
        let window = window();
        for text in [
            "1s",
            "60s",
            "2678400s",
            "2678401s",
            "0s",
            "1m",
            "44640m",
            "44641m",
            "744h",
            "745h",
            "31d",
            "32d",
            "4w",
            "5w",
            "01m",
            "+1m",
            "00s",
            "0000000000000000000001s",
            "1M",
            "1",
            "m",
            "",
            " 1m",
            "1.5h",
        ] {
            assert_eq!(
                is_match(&window, text),
                Window::parse(text).is_ok(),
                "window {text:?}"
            );
        }
        for text in [
            "a",
            "per_1m",
            "x-y",
            &"a".repeat(32),
            &"a".repeat(33),
            "",
            "A",
            "a b",
            "é",
        ] {
            assert_eq!(
                is_match(LIMIT_NAME, text),
                LimitName::new(text).is_ok(),
                "name {text:?}"
            );
        }
    }

    #[test]
    fn lifetimes_and_grace_periods_match_their_rules() {
        for ok in [
            "1s",
            "90d",
            "12h",
            "2w",
            "36500d",
            "5214w",
            "876000h",
            "3153600000s",
        ] {
            assert!(is_match(&lifetime(), ok), "{ok}");
            assert!(crate::Lifetime::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "0d", "36501d", "5215w", "90", "d", "9y", "01d", "-1d", " 1d", "1.5d",
        ] {
            assert!(!is_match(&lifetime(), bad), "{bad}");
        }
        for ok in ["0", "0s", "0h", "24h"] {
            assert!(is_match(&grace(), ok) && parse_grace(ok).is_ok(), "{ok}");
        }
        assert!(!is_match(&grace(), "soon"));
    }

    #[test]
    fn key_ids_and_prefixes() {
        let id = crate::KeyId::generate(Timestamp::from_unix_ms(1_800_000_000_000).unwrap());
        assert!(is_match(KEY_ID, id.as_str()));
        assert!(!is_match(KEY_ID, "key_8ZZZZZZZZZZZZZZZZZZZZZZZZZ"));
        for ok in ["kg", "acme_live", "a"] {
            assert!(is_match(PREFIX, ok) && Prefix::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Kg", "1kg", "kg-live", &"a".repeat(33)] {
            assert!(!is_match(PREFIX, bad) && Prefix::new(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// The scope pattern accepts exactly what `check_scope` accepts (within the length limit).
        #[test]
        fn the_scope_pattern_is_the_scope_rule(scope in "[a-z0-9_.:*\\- A]{0,12}") {
            prop_assert_eq!(is_match(SCOPE, &scope), check_scope(&scope).is_ok(), "{:?}", scope);
        }

        /// The text pattern accepts exactly the names the record rules accept (within the
        /// length limit).
        #[test]
        fn the_text_pattern_is_the_name_rule(name in "[ a\t\u{85}\u{7f}\u{a0}é\u{2003}\u{1}]{0,6}") {
            prop_assert_eq!(is_match(TEXT, &name), name_ok(&name), "{:?}", name);
        }
    }
}
