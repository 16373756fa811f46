//! The subset of IoT Hub's query language that operators use on twins:
//! `SELECT * | field, ... FROM devices | devices.modules [WHERE condition]`, conditions over
//! `deviceId`, `moduleId`, `tags.*`, `properties.desired.*`, `properties.reported.*` with
//! `=`, `!=` (`<>`), `<`, `>`, `<=`, `>=`, `AND`, `OR`, `NOT`, parentheses and `IS_DEFINED()`;
//! and configurations' target conditions (a bare condition, or `FROM devices.modules WHERE
//! condition`). Comparisons with a missing member are undefined, as on IoT Hub: neither they
//! nor their negation match. Pure.

use serde_json::{Map, Value};

/// Why a query does not parse: where (1-based character position) and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("query syntax error at position {position}: {message}")]
pub struct QueryError {
    /// 1-based character position in the query.
    pub position: usize,
    /// What was expected.
    pub message: String,
}

/// Which twins a query reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Device twins.
    Devices,
    /// Module twins.
    Modules,
}

/// A parsed query.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// `None` for `*`, else the selected member paths.
    pub select: Option<Vec<Vec<String>>>,
    /// What it reads.
    pub source: Source,
    /// The `WHERE` condition (none: every twin).
    pub condition: Option<Condition>,
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `>=`
    Ge,
}

/// A `WHERE` condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// `path op literal`.
    Compare(Vec<String>, Op, Value),
    /// `IS_DEFINED(path)`.
    IsDefined(Vec<String>),
    /// `NOT c`.
    Not(Box<Condition>),
    /// `a AND b`.
    And(Box<Condition>, Box<Condition>),
    /// `a OR b`.
    Or(Box<Condition>, Box<Condition>),
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(f64),
    Symbol(&'static str),
}

fn err(position: usize, message: impl Into<String>) -> QueryError {
    QueryError {
        position,
        message: message.into(),
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '$' | '.' | '@' | '#')
}

/// Splits a query into tokens, each with its 1-based position.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err(at, "a string that is not closed")),
                    // Two quotes in a row stand for one, as in SQL.
                    Some(&q) if q == c && chars.get(i + 1) == Some(&c) => {
                        s.push(c);
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        s.push(other);
                        i += 1;
                    }
                }
            }
            out.push((at, Token::Text(s)));
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            i += 1;
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
            {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            let n = s
                .parse::<f64>()
                .map_err(|_| err(at, format!("{s:?} is not a number")))?;
            out.push((at, Token::Number(n)));
        } else if is_word_char(c) {
            let start = i;
            while chars.get(i).is_some_and(|c| is_word_char(*c)) {
                i += 1;
            }
            out.push((at, Token::Word(chars[start..i].iter().collect())));
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let symbol = match two.as_str() {
                "!=" => Some("!="),
                "<>" => Some("!="),
                "<=" => Some("<="),
                ">=" => Some(">="),
                _ => None,
            };
            if let Some(s) = symbol {
                out.push((at, Token::Symbol(s)));
                i += 2;
                continue;
            }
            let one = match c {
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '*' => "*",
                _ => return Err(err(at, format!("unexpected character {c:?}"))),
            };
            out.push((at, Token::Symbol(one)));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    end: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Parser, QueryError> {
        Ok(Parser {
            tokens: tokenize(text)?,
            next: 0,
            end: text.chars().count() + 1,
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(p, _)| *p)
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word)) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, word: &str) -> Result<(), QueryError> {
        if self.keyword(word) {
            Ok(())
        } else {
            Err(err(self.position(), format!("expected {word}")))
        }
    }

    fn symbol(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Token::Symbol(t)) if *t == s) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn expect_symbol(&mut self, s: &str) -> Result<(), QueryError> {
        if self.symbol(s) {
            Ok(())
        } else {
            Err(err(self.position(), format!("expected {s:?}")))
        }
    }

    fn path(&mut self) -> Result<Vec<String>, QueryError> {
        let at = self.position();
        match self.peek().cloned() {
            Some(Token::Word(w)) if !is_reserved(&w) => {
                self.next += 1;
                let path: Vec<String> = w.split('.').map(str::to_owned).collect();
                if path.iter().any(String::is_empty) {
                    return Err(err(at, format!("{w:?} is not a member path")));
                }
                Ok(path)
            }
            _ => Err(err(at, "expected a member path (e.g. tags.site)")),
        }
    }

    fn source(&mut self) -> Result<Source, QueryError> {
        let at = self.position();
        match self.peek().cloned() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("devices") => {
                self.next += 1;
                Ok(Source::Devices)
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("devices.modules") => {
                self.next += 1;
                Ok(Source::Modules)
            }
            _ => Err(err(at, "expected devices or devices.modules")),
        }
    }

    fn condition(&mut self) -> Result<Condition, QueryError> {
        let mut left = self.conjunction()?;
        while self.keyword("OR") {
            let right = self.conjunction()?;
            left = Condition::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn conjunction(&mut self) -> Result<Condition, QueryError> {
        let mut left = self.negation()?;
        while self.keyword("AND") {
            let right = self.negation()?;
            left = Condition::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn negation(&mut self) -> Result<Condition, QueryError> {
        if self.keyword("NOT") {
            return Ok(Condition::Not(Box::new(self.negation()?)));
        }
        if self.symbol("(") {
            let inner = self.condition()?;
            self.expect_symbol(")")?;
            return Ok(inner);
        }
        if self.keyword("IS_DEFINED") {
            self.expect_symbol("(")?;
            let path = self.path()?;
            self.expect_symbol(")")?;
            return Ok(Condition::IsDefined(path));
        }
        let path = self.path()?;
        let at = self.position();
        let op = [
            ("=", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .into_iter()
        .find(|(s, _)| self.symbol(s))
        .map(|(_, op)| op)
        .ok_or_else(|| err(at, "expected a comparison (=, !=, <>, <, >, <=, >=)"))?;
        let at = self.position();
        let literal = match self.peek().cloned() {
            Some(Token::Text(s)) => Value::from(s),
            Some(Token::Number(n)) => {
                if n.fract() == 0.0 && n.abs() < 9.0e15 {
                    // Whole numbers stay integers, so they compare equal to stored integers.
                    #[allow(clippy::cast_possible_truncation)]
                    Value::from(n as i64)
                } else {
                    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
                }
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("null") => Value::Null,
            _ => {
                return Err(err(
                    at,
                    "expected a value ('text', a number, true, false or null)",
                ))
            }
        };
        self.next += 1;
        Ok(Condition::Compare(path, op, literal))
    }

    fn finish(&self) -> Result<(), QueryError> {
        if self.next < self.tokens.len() {
            return Err(err(self.position(), "unexpected text after the query"));
        }
        Ok(())
    }
}

fn is_reserved(word: &str) -> bool {
    ["AND", "OR", "NOT", "WHERE", "FROM", "SELECT", "IS_DEFINED"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(word))
}

impl Query {
    /// Parses `SELECT ... FROM ... [WHERE ...]`.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        let mut p = Parser::new(text)?;
        p.expect_keyword("SELECT")?;
        let select = if p.symbol("*") {
            None
        } else {
            let mut fields = vec![p.path()?];
            while p.symbol(",") {
                fields.push(p.path()?);
            }
            Some(fields)
        };
        p.expect_keyword("FROM")?;
        let source = p.source()?;
        let condition = if p.keyword("WHERE") {
            Some(p.condition()?)
        } else {
            None
        };
        p.finish()?;
        Ok(Query {
            select,
            source,
            condition,
        })
    }

    /// Whether `twin` (as the service API shows it) matches.
    pub fn matches(&self, twin: &Value) -> bool {
        self.condition
            .as_ref()
            .is_none_or(|c| evaluate(c, twin) == Some(true))
    }

    /// The item the query returns for a matching `twin`.
    pub fn project(&self, twin: &Value) -> Value {
        let Some(fields) = &self.select else {
            return twin.clone();
        };
        let mut out = Map::new();
        for path in fields {
            if let Some(v) = lookup(twin, path) {
                out.insert(path.last().cloned().unwrap_or_default(), v.clone());
            }
        }
        Value::Object(out)
    }
}

/// A configuration's target condition: a bare condition over device twins, or `FROM
/// devices.modules WHERE condition` over module twins. An empty text targets nothing.
pub fn parse_target(text: &str) -> Result<Option<(Source, Condition)>, QueryError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut p = Parser::new(text)?;
    let source = if p.keyword("FROM") {
        let source = p.source()?;
        p.expect_keyword("WHERE")?;
        source
    } else {
        Source::Devices
    };
    let condition = p.condition()?;
    p.finish()?;
    Ok(Some((source, condition)))
}

/// The value at `path` in `doc`.
pub fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, key| v.get(key))
}

/// Three-valued evaluation: `None` is undefined (a comparison with a missing member).
pub fn evaluate(c: &Condition, twin: &Value) -> Option<bool> {
    match c {
        Condition::IsDefined(path) => Some(lookup(twin, path).is_some()),
        Condition::Not(inner) => evaluate(inner, twin).map(|b| !b),
        Condition::And(a, b) => match (evaluate(a, twin), evaluate(b, twin)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Condition::Or(a, b) => match (evaluate(a, twin), evaluate(b, twin)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Condition::Compare(path, op, literal) => {
            let found = lookup(twin, path)?;
            compare(found, *op, literal)
        }
    }
}

fn compare(found: &Value, op: Op, literal: &Value) -> Option<bool> {
    use std::cmp::Ordering;
    let ordering = match (found, literal) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?)?,
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Null, Value::Null) => Ordering::Equal,
        // Values of different types are unequal and unordered.
        _ => {
            return match op {
                Op::Eq => Some(false),
                Op::Ne => Some(true),
                _ => None,
            }
        }
    };
    Some(match op {
        Op::Eq => ordering == Ordering::Equal,
        Op::Ne => ordering != Ordering::Equal,
        Op::Lt => ordering == Ordering::Less,
        Op::Gt => ordering == Ordering::Greater,
        Op::Le => ordering != Ordering::Greater,
        Op::Ge => ordering != Ordering::Less,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn twin() -> Value {
        json!({
            "deviceId": "d1", "moduleId": "azureiotsecurity",
            "tags": {"site": "plant1", "floor": 3},
            "properties": {"desired": {}, "reported": {"twinguard": {"configurationStatus": "rejected"}}},
        })
    }

    #[test]
    fn queries_select_and_filter() {
        let q = Query::parse(
            "SELECT * FROM devices.modules WHERE moduleId = 'azureiotsecurity' AND tags.site='plant1'",
        )
        .expect("parses");
        assert_eq!(q.source, Source::Modules);
        assert!(q.matches(&twin()));
        let q = Query::parse(
            "select deviceId from devices.modules where properties.reported.twinguard.configurationStatus = 'rejected'",
        )
        .expect("parses");
        assert!(q.matches(&twin()));
        assert_eq!(q.project(&twin()), json!({"deviceId": "d1"}));
        for (cond, expected) in [
            ("tags.floor > 2", true),
            ("tags.floor >= 4", false),
            ("tags.floor <> 3", false),
            ("NOT tags.site = 'plant2'", true),
            ("tags.missing = 'x'", false),
            ("NOT tags.missing = 'x'", false),
            ("IS_DEFINED(tags.site) AND NOT IS_DEFINED(tags.missing)", true),
            ("(tags.site = 'x' OR tags.floor = 3) AND deviceId != 'd2'", true),
            ("tags.site = 3", false),
        ] {
            let q = Query::parse(&format!("SELECT * FROM devices WHERE {cond}")).expect(cond);
            assert_eq!(q.matches(&twin()), expected, "{cond}");
        }
        assert!(Query::parse("SELECT * FROM devices")
            .expect("parses")
            .matches(&json!({})));
    }

    #[test]
    fn errors_say_where() {
        let e = Query::parse("SELECT * FROM devices WHERE tags.site = ").expect_err("incomplete");
        assert_eq!(e.position, 41, "{e}");
        let e = Query::parse("SELECT * FRM devices").expect_err("typo");
        assert_eq!(e.position, 10, "{e}");
        assert!(Query::parse("SELECT * FROM devices WHERE a = 'open").is_err());
        assert!(Query::parse("SELECT * FROM devices WHERE a = 1 b").is_err());
        assert!(Query::parse("SELECT * FROM jobs").is_err());
    }

    #[test]
    fn target_conditions() {
        let (source, c) =
            parse_target("from devices.modules where moduleId='azureiotsecurity' and tags.site='plant1'")
                .expect("parses")
                .expect("some");
        assert_eq!(source, Source::Modules);
        assert_eq!(evaluate(&c, &twin()), Some(true));
        let (source, _) = parse_target("tags.site='plant1'").expect("parses").expect("some");
        assert_eq!(source, Source::Devices);
        assert_eq!(parse_target("  ").expect("parses"), None);
    }
}
