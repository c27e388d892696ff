//! Why something failed underneath: the error a port's error keeps as its
//! `source()`, and a printer of the whole chain for the one log line at the
//! edge. Errors here say what failed in their own `Display` and leave the
//! cause to `source()`, so the chain prints each message once.

use std::error::Error;
use std::fmt;

/// The underlying error a failure keeps (a driver's, a parser's). Plain
/// `std`, so the domain stays free of frameworks; `"text".into()` makes one
/// where there is no error value to keep.
pub type Cause = Box<dyn Error + Send + Sync + 'static>;

/// Displays an error and every `source()` below it, joined by `: `, for a
/// log line (`error = %Chain(&err)`). Never for a client: causes carry
/// driver text.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(err) = next {
            let text = err.to_string();
            // Some errors (sqlx's among them) repeat their source in their
            // own message: print it once.
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            next = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Cause);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Repeats(#[source] Cause);

    #[test]
    fn the_chain_shows_every_cause_once() {
        let err = Outer(Box::new(Repeats("bottom".into())));
        assert_eq!(Chain(&err).to_string(), "outer: middle: bottom");
    }

    #[test]
    fn an_error_without_a_source_is_its_message() {
        let err = Outer("only".into());
        assert_eq!(Chain(err.0.as_ref()).to_string(), "only");
    }
}
