//! [`Terms`]: which term (the view in which its primary took office) wrote each part of a log.
//!
//! Only the primary of a term writes records of that term, so two logs that hold a record at
//! the same LSN in the same term hold the same record there, and everything before it is the
//! same too. That is how a primary tells a returning server whose log is a prefix of its own
//! (send it what it lacks) from one that wrote records nobody acknowledged (copy its state
//! over), as Kafka's leader epochs do.

use std::fmt;

/// Why a term history cannot take an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermsError {
    /// The term is older than the newest one in the history.
    Older {
        /// The term offered.
        term: u64,
        /// The newest term known.
        newest: u64,
    },
    /// The term starts before the newest one does.
    StartsBefore {
        /// The start offered.
        start: u64,
        /// Where the newest term starts.
        newest_start: u64,
    },
}

impl fmt::Display for TermsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TermsError::Older { term, newest } => write!(f, "term {term} is older than term {newest}"),
            TermsError::StartsBefore { start, newest_start } => {
                write!(f, "a term starting at LSN {start} cannot follow one starting at {newest_start}")
            }
        }
    }
}

impl std::error::Error for TermsError {}

/// The term history of one log: `(term, first LSN)` pairs, both increasing (a term that wrote
/// nothing has the same first LSN as the next).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terms {
    entries: Vec<(u64, u64)>,
}

impl Terms {
    /// A history from its entries.
    ///
    /// # Errors
    /// [`TermsError`] if they are out of order.
    pub fn from_entries(entries: &[(u64, u64)]) -> Result<Terms, TermsError> {
        let mut terms = Terms::default();
        for &(term, start) in entries {
            terms.push(term, start)?;
        }
        Ok(terms)
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[(u64, u64)] {
        &self.entries
    }

    /// The newest term (0 when empty).
    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.0)
    }

    /// The term that wrote `lsn` (0 for LSN 0 or before the first entry).
    pub fn term_at(&self, lsn: u64) -> u64 {
        if lsn == 0 {
            return 0;
        }
        self.entries.iter().rev().find(|e| e.1 <= lsn).map_or(0, |e| e.0)
    }

    /// The last LSN that `term` wrote in a log ending at `last_lsn`: `None` if the history has
    /// no such term (then its records, if any, are not in this log).
    pub fn end_of(&self, term: u64, last_lsn: u64) -> Option<u64> {
        let i = self.entries.iter().position(|e| e.0 == term)?;
        Some(match self.entries.get(i + 1) {
            Some(next) => next.1.saturating_sub(1),
            None => last_lsn,
        })
    }

    /// The first term boundary after `lsn`: `(first LSN, term)` of the next entry starting
    /// later than `lsn`.
    pub fn next_boundary(&self, lsn: u64) -> Option<(u64, u64)> {
        self.entries.iter().find(|e| e.1 > lsn).map(|&(t, s)| (s, t))
    }

    /// Records that `term` starts at `start`. Returns whether anything changed (a term already
    /// newest is not added again).
    ///
    /// # Errors
    /// [`TermsError`] if `term` is older than the newest or starts before it.
    pub fn push(&mut self, term: u64, start: u64) -> Result<bool, TermsError> {
        if let Some(&(newest, newest_start)) = self.entries.last() {
            if term < newest {
                return Err(TermsError::Older { term, newest });
            }
            if term == newest {
                return Ok(false);
            }
            if start < newest_start {
                return Err(TermsError::StartsBefore { start, newest_start });
            }
        }
        self.entries.push((term, start));
        Ok(true)
    }

    /// Whether a log that ends at (`last_term`, `last_lsn`) holds nothing this log (ending at
    /// `my_last_lsn`) does not hold the same: its records are a prefix of ours.
    pub fn has_prefix(&self, last_term: u64, last_lsn: u64, my_last_lsn: u64) -> bool {
        if last_lsn == 0 {
            return true;
        }
        if last_lsn > my_last_lsn {
            return false;
        }
        match self.end_of(last_term, my_last_lsn) {
            Some(end) => last_lsn <= end && self.term_at(last_lsn) == last_term,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_answer_where_logs_part() {
        let t = Terms::from_entries(&[(1, 1), (4, 50), (6, 90), (9, 90)]).unwrap();
        assert_eq!(t.term_at(0), 0);
        assert_eq!(t.term_at(1), 1);
        assert_eq!(t.term_at(49), 1);
        assert_eq!(t.term_at(50), 4);
        assert_eq!(t.term_at(90), 9, "term 6 wrote nothing");
        assert_eq!(t.end_of(1, 120), Some(49));
        assert_eq!(t.end_of(4, 120), Some(89));
        assert_eq!(t.end_of(9, 120), Some(120));
        assert_eq!(t.end_of(5, 120), None);
        assert_eq!(t.next_boundary(49), Some((50, 4)));
        assert_eq!(t.next_boundary(90), None);
        // A returning server that stopped inside term 4 is a prefix; one that went on writing
        // in term 4 past where term 9 took over is not; one whose term we never had is not.
        assert!(t.has_prefix(4, 70, 120));
        assert!(t.has_prefix(4, 89, 120));
        assert!(!t.has_prefix(4, 95, 120));
        assert!(!t.has_prefix(5, 60, 120));
        assert!(!t.has_prefix(9, 130, 120));
        assert!(t.has_prefix(0, 0, 120));
    }

    #[test]
    fn terms_only_move_forward() {
        let mut t = Terms::default();
        assert_eq!(t.push(3, 1), Ok(true));
        assert_eq!(t.push(3, 7), Ok(false));
        assert_eq!(t.push(2, 9), Err(TermsError::Older { term: 2, newest: 3 }));
        assert_eq!(t.push(5, 0), Err(TermsError::StartsBefore { start: 0, newest_start: 1 }));
        assert_eq!(t.push(5, 1), Ok(true));
        assert_eq!(t.last_term(), 5);
    }
}
