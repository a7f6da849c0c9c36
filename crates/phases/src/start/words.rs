//! Shell words without a shell: what KubeRay's generated `ray start`
//! command means, minus everything a shell would run. Entry point:
//! [`split`].
//!
//! Accepted: words separated by blanks, single quotes (literal), double
//! quotes (with `\"`, `\\`, `\$` and `` \` `` escapes), backslash escapes,
//! and `$NAME` / `${NAME}` expanded from the environment (KubeRay writes
//! `--redis-password=$REDIS_PASSWORD` for GCS fault tolerance). Unlike a
//! shell, an expanded value is never split into several words nor matched
//! against files, and a variable that is not set is an error rather than
//! an empty word. Refused, naming what was found: command substitution
//! (`$(...)`, backticks), any other expansion (`${A:-b}`, `$1`, `$?`,
//! `$'...'`), operators (`;`, `&`, `|`, `<`, `>`, `(`, `)`), file patterns
//! (`*`, `?`, `[`), braces, a leading `~` or `#`, and unterminated quotes.

use std::ffi::OsString;

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordsError {
    /// A quote opened and never closed.
    #[error("its {0} quote is never closed")]
    Unterminated(&'static str),
    /// It ends inside an escape.
    #[error("it ends with a lone backslash")]
    TrailingBackslash,
    /// Something a shell would run or expand, which this parser does not.
    #[error("it contains {found} at byte {at}, which only a shell would {does}")]
    Shell {
        /// The text found.
        found: String,
        /// Where, in bytes from the start.
        at: usize,
        /// What a shell would do with it.
        does: &'static str,
    },
    /// `$NAME` for a variable that is not set.
    #[error(
        "it uses ${name}, which is not set in the environment; set it (e.g. from the Secret KubeRay names) or remove it"
    )]
    Unset {
        /// The variable.
        name: String,
    },
    /// `$NAME` for a variable whose value is not UTF-8.
    #[error("it uses ${name}, whose value is not UTF-8")]
    NotUnicode {
        /// The variable.
        name: String,
    },
}

fn shell(found: impl Into<String>, at: usize, does: &'static str) -> WordsError {
    WordsError::Shell {
        found: found.into(),
        at,
        does,
    }
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Splits `text` into words as described in the module documentation,
/// looking variables up with `lookup`.
pub fn split(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Vec<String>, WordsError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word exists once anything (even `''`) was written for it.
    let mut started = false;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            '\'' => {
                started = true;
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, c)) => word.push(c),
                        None => return Err(WordsError::Unterminated("single")),
                    }
                }
            }
            '"' => {
                started = true;
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\n')) => {}
                            Some((_, c @ ('"' | '\\' | '$' | '`'))) => word.push(c),
                            Some((_, c)) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(WordsError::Unterminated("double")),
                        },
                        Some((at, '$')) => expand(&mut chars, at, &mut word, lookup)?,
                        Some((at, '`')) => return Err(shell("`", at, "run as a command")),
                        Some((_, c)) => word.push(c),
                        None => return Err(WordsError::Unterminated("double")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some((_, '\n')) => {}
                Some((_, c)) => {
                    started = true;
                    word.push(c);
                }
                None => return Err(WordsError::TrailingBackslash),
            },
            '$' => {
                started = true;
                expand(&mut chars, at, &mut word, lookup)?;
            }
            '`' => return Err(shell("`", at, "run as a command")),
            ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                return Err(shell(c, at, "treat as an operator"));
            }
            '*' | '?' | '[' => return Err(shell(c, at, "match against file names")),
            '{' | '}' => return Err(shell(c, at, "treat as a brace; quote it")),
            '~' | '#' if !started => {
                return Err(shell(
                    c,
                    at,
                    if c == '~' {
                        "expand to a home directory"
                    } else {
                        "treat as a comment"
                    },
                ));
            }
            c => {
                started = true;
                word.push(c);
            }
        }
    }
    if started {
        words.push(word);
    }
    Ok(words)
}

/// Expands the `$` at byte `at` (already consumed) into `word`.
fn expand(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    at: usize,
    word: &mut String,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Result<(), WordsError> {
    let name = match chars.peek().map(|(_, c)| *c) {
        Some('{') => {
            chars.next();
            let mut name = String::new();
            loop {
                match chars.next() {
                    Some((_, '}')) if !name.is_empty() => break,
                    Some((_, c)) if is_name(c) && (!name.is_empty() || is_name_start(c)) => {
                        name.push(c)
                    }
                    _ => {
                        return Err(shell(
                            format!("${{{name}..."),
                            at,
                            "expand (only $NAME and ${NAME} are expanded here)",
                        ));
                    }
                }
            }
            name
        }
        Some('(') => return Err(shell("$(", at, "run as a command")),
        Some(c) if is_name_start(c) => {
            let mut name = String::new();
            while let Some((_, c)) = chars.peek().copied().filter(|(_, c)| is_name(*c)) {
                name.push(c);
                chars.next();
            }
            name
        }
        // A `$` before a blank, a quote's end or the end is just a `$`.
        None | Some(' ' | '\t' | '\n' | '"') => {
            word.push('$');
            return Ok(());
        }
        Some(c) => {
            return Err(shell(
                format!("${c}"),
                at,
                "expand (only $NAME and ${NAME} are expanded here)",
            ));
        }
    };
    match lookup(&name) {
        None => Err(WordsError::Unset { name }),
        Some(value) => {
            let value = value
                .into_string()
                .map_err(|_| WordsError::NotUnicode { name })?;
            word.push_str(&value);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(name: &str) -> Option<OsString> {
        match name {
            "REDIS_PASSWORD" => Some("s3cret pass'\"$x".into()),
            "EMPTY" => Some("".into()),
            _ => None,
        }
    }

    fn words(text: &str) -> Result<Vec<String>, WordsError> {
        split(text, &env)
    }

    #[test]
    fn variables_expand_whole_in_every_quoting() {
        for text in [
            "--redis-password=$REDIS_PASSWORD",
            "--redis-password=${REDIS_PASSWORD}",
            "\"--redis-password=$REDIS_PASSWORD\"",
            "--redis-password=\"${REDIS_PASSWORD}\"",
        ] {
            assert_eq!(
                words(text).unwrap(),
                ["--redis-password=s3cret pass'\"$x"],
                "{text}"
            );
        }
        assert_eq!(words("'$REDIS_PASSWORD'").unwrap(), ["$REDIS_PASSWORD"]);
        assert_eq!(words("\\$REDIS_PASSWORD").unwrap(), ["$REDIS_PASSWORD"]);
        assert_eq!(words("a $EMPTY b").unwrap(), ["a", "", "b"]);
        assert_eq!(words("cost $ 5").unwrap(), ["cost", "$", "5"]);
    }

    #[test]
    fn what_only_a_shell_does_is_refused_by_name() {
        for (text, found) in [
            ("--x=$(id)", "$("),
            ("--x=`id`", "`"),
            ("\"--x=`id`\"", "`"),
            ("--x=${A:-b}", "${A..."),
            ("--x=$1", "$1"),
            ("--x=$?", "$?"),
            ("--x=$'a'", "$'"),
            ("ray start; id", ";"),
            ("a && b", "&"),
            ("a > f", ">"),
            ("--x=*", "*"),
            ("--x={a,b}", "{"),
            ("~/bin/ray", "~"),
            ("# comment", "#"),
        ] {
            match words(text) {
                Err(WordsError::Shell { found: f, .. }) => assert_eq!(f, found, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(
            words("--x=$NOPE"),
            Err(WordsError::Unset {
                name: "NOPE".into()
            })
        );
        assert!(
            words("--x=$NOPE")
                .unwrap_err()
                .to_string()
                .contains("$NOPE")
        );
        assert_eq!(words("'open"), Err(WordsError::Unterminated("single")));
        assert_eq!(words("\"open"), Err(WordsError::Unterminated("double")));
        assert_eq!(words("end\\"), Err(WordsError::TrailingBackslash));
    }

    #[test]
    fn a_value_that_is_not_utf8_is_named() {
        use std::os::unix::ffi::OsStringExt;
        let lookup = |_: &str| Some(OsString::from_vec(vec![0xff, 0xfe]));
        assert_eq!(
            split("$X", &lookup),
            Err(WordsError::NotUnicode { name: "X".into() })
        );
    }

    #[test]
    fn megabytes_split_in_linear_time() {
        let text = "--a=b ".repeat(500_000);
        let start = std::time::Instant::now();
        assert_eq!(words(&text).unwrap().len(), 500_000);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    /// Quotes `w` for a POSIX shell.
    fn quote(w: &str) -> String {
        format!("'{}'", w.replace('\'', "'\\''"))
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
            )),
            ..ProptestConfig::default()
        })]

        /// Never a panic, whatever the text.
        #[test]
        fn any_text_splits_or_is_refused(text in "\\PC{0,200}") {
            let _ = words(&text);
        }

        /// Shell-quoted words come back exactly as they were.
        #[test]
        fn quoted_words_round_trip(list in proptest::collection::vec("\\PC{0,30}", 0..8)) {
            let text = list.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
            prop_assert_eq!(words(&text).unwrap(), list);
        }

        /// An expanded value stays one word, whatever it holds.
        #[test]
        fn expansion_is_one_word(value in "\\PC{0,40}") {
            let lookup = |n: &str| (n == "V").then(|| OsString::from(value.clone()));
            prop_assert_eq!(split("--x=$V", &lookup).unwrap(), vec![format!("--x={value}")]);
        }
    }
}
