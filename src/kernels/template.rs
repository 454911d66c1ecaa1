//! The expander of the WGSL templates in `shaders/` (`*.tmpl.wgsl`): the kernels generated per
//! tile shape are written there as WGSL with a few markers, and expanded here for one shape.
//!
//! The generated kernels unroll loops over a tile's pixels, channels and matrices into named
//! variables, because WGSL has no way to do it: on llvmpipe a loop or an array index left to run
//! time costs 2-4x, and an array of accumulators compiles to scratch memory (see the templates).
//! The markers:
//!
//! - `{{EXPR}}`: the value of `EXPR`. A name bound to text gives the text; anything else is an
//!   integer expression over decimal literals, names bound to integers and loop variables, with
//!   `*`, `/`, `%`, `+`, `-`, `<<`, `>>`, the comparisons `==`, `!=`, `<`, `<=`, `>`, `>=`
//!   (1 or 0) and parentheses, with Rust's precedence.
//! - `{{#for NAME in FROM..TO}}` ... `{{/for}}`: the body once for each NAME in FROM..TO (TO
//!   excluded; FROM and TO are expressions).
//! - `{{#if EXPR}}` ... `{{#else}}` ... `{{/if}}`: the first part where EXPR is not 0, else the
//!   second (`{{#else}}` optional).
//!
//! A line holding nothing but one block marker (`#for`, `/for`, `#if`, `#else`, `/if`) and white
//! space is dropped whole, so that the markers can sit on lines of their own without leaving
//! blank lines in the WGSL.
//!
//! The templates are compiled into the crate and `tests/shaders.rs` expands and validates them
//! for every shape the kernels use, so a malformed template is a bug of the crate: the expander
//! panics on one, naming the template and the marker.

use std::collections::HashMap;

/// A WGSL template compiled into the crate.
#[derive(Debug)]
pub struct ShaderTemplate {
    /// Its file name under `shaders/`.
    pub name: &'static str,
    /// Its text.
    pub source: &'static str,
}

/// A value a template's markers can use.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    /// An integer, for expressions.
    Int(i64),
    /// Text, substituted as it is.
    Text(&'a str),
}

impl From<usize> for Value<'_> {
    fn from(v: usize) -> Self {
        Value::Int(v as i64)
    }
}

impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::Int(v as i64)
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Int(v as i64)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(v)
    }
}

impl ShaderTemplate {
    /// The WGSL for `values` (names and their values).
    ///
    /// # Panics
    ///
    /// On a malformed template, or one that uses a name `values` does not bind.
    pub fn expand(&self, values: &[(&str, Value<'_>)]) -> String {
        let nodes = parse(self.name, self.source);
        let mut scope = Scope {
            template: self.name,
            values: values.iter().copied().collect(),
        };
        let mut out = String::with_capacity(self.source.len() * 2);
        scope.render(&nodes, &mut out);
        out
    }
}

/// A piece of a parsed template.
#[derive(Debug)]
enum Node<'t> {
    Text(&'t str),
    Value(&'t str),
    For {
        name: &'t str,
        from: &'t str,
        to: &'t str,
        body: Vec<Node<'t>>,
    },
    If {
        cond: &'t str,
        then: Vec<Node<'t>>,
        otherwise: Vec<Node<'t>>,
    },
}

/// A marker's text between `{{` and `}}`, and the template text around it to keep.
struct Marker<'t> {
    /// The text before the marker, without the marker's line when it stands alone.
    before: &'t str,
    body: &'t str,
    /// Where the text after the marker starts.
    next: usize,
}

/// The next marker at or after `at`, if any.
fn next_marker<'t>(name: &str, text: &'t str, at: usize) -> Option<Marker<'t>> {
    let open = at + text[at..].find("{{")?;
    let close = open
        + text[open..]
            .find("}}")
            .unwrap_or_else(|| panic!("{name}: a `{{{{` without `}}}}`"));
    let body = text[open + 2..close].trim();
    let mut before = &text[at..open];
    let mut next = close + 2;
    // A block marker alone on its line takes the line with it.
    if body.starts_with('#') || body.starts_with('/') {
        let line_start = text[..open].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[next..].find('\n').map_or(text.len(), |i| next + i);
        let alone = text[line_start..open].trim().is_empty()
            && text[next..line_end].trim().is_empty()
            && line_start >= at;
        if alone {
            before = &text[at..line_start];
            next = (line_end + 1).min(text.len());
        }
    }
    Some(Marker { before, body, next })
}

fn parse<'t>(name: &str, text: &'t str) -> Vec<Node<'t>> {
    let mut at = 0;
    let (nodes, end) = parse_block(name, text, &mut at);
    if let Some(end) = end {
        panic!("{name}: `{{{{{end}}}}}` without its opening marker");
    }
    nodes
}

/// Parses nodes from `at` up to the first closing marker (`/for`, `/if` or `#else`), which it
/// returns, or to the end of the text (None).
fn parse_block<'t>(name: &str, text: &'t str, at: &mut usize) -> (Vec<Node<'t>>, Option<&'t str>) {
    let mut nodes = Vec::new();
    while let Some(m) = next_marker(name, text, *at) {
        if !m.before.is_empty() {
            nodes.push(Node::Text(m.before));
        }
        *at = m.next;
        let body = m.body;
        if body == "/for" || body == "/if" || body == "#else" {
            return (nodes, Some(body));
        }
        if let Some(rest) = body.strip_prefix("#for ") {
            let (var, range) = rest
                .split_once(" in ")
                .unwrap_or_else(|| panic!("{name}: `{{{{{body}}}}}` is not `#for NAME in A..B`"));
            let (from, to) = range
                .split_once("..")
                .unwrap_or_else(|| panic!("{name}: `{{{{{body}}}}}` has no `..` range"));
            let (inner, end) = parse_block(name, text, at);
            if end != Some("/for") {
                panic!("{name}: `{{{{{body}}}}}` is not closed by `{{{{/for}}}}`");
            }
            nodes.push(Node::For {
                name: var.trim(),
                from: from.trim(),
                to: to.trim(),
                body: inner,
            });
        } else if let Some(cond) = body.strip_prefix("#if ") {
            let (then, mut end) = parse_block(name, text, at);
            let mut otherwise = Vec::new();
            if end == Some("#else") {
                (otherwise, end) = parse_block(name, text, at);
            }
            if end != Some("/if") {
                panic!("{name}: `{{{{{body}}}}}` is not closed by `{{{{/if}}}}`");
            }
            nodes.push(Node::If {
                cond: cond.trim(),
                then,
                otherwise,
            });
        } else if body.starts_with('#') || body.starts_with('/') {
            panic!("{name}: unknown marker `{{{{{body}}}}}`");
        } else {
            nodes.push(Node::Value(body));
        }
    }
    if *at < text.len() {
        nodes.push(Node::Text(&text[*at..]));
        *at = text.len();
    }
    (nodes, None)
}

/// The names bound while rendering: the caller's values and the enclosing loops' variables.
struct Scope<'a> {
    template: &'a str,
    values: HashMap<&'a str, Value<'a>>,
}

impl<'a> Scope<'a> {
    fn render(&mut self, nodes: &[Node<'a>], out: &mut String) {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Value(e) => match self.values.get(e) {
                    Some(Value::Text(t)) => out.push_str(t),
                    _ => out.push_str(&self.eval(e).to_string()),
                },
                Node::For {
                    name,
                    from,
                    to,
                    body,
                } => {
                    let (from, to) = (self.eval(from), self.eval(to));
                    let shadowed = self.values.get(name).copied();
                    for i in from..to {
                        self.values.insert(name, Value::Int(i));
                        self.render(body, out);
                    }
                    match shadowed {
                        Some(v) => self.values.insert(name, v),
                        None => self.values.remove(name),
                    };
                }
                Node::If {
                    cond,
                    then,
                    otherwise,
                } => {
                    let part = if self.eval(cond) != 0 {
                        then
                    } else {
                        otherwise
                    };
                    self.render(part, out);
                }
            }
        }
    }

    fn eval(&self, expr: &str) -> i64 {
        let tokens = tokenize(self.template, expr);
        let mut parser = Parser {
            scope: self,
            expr,
            tokens: &tokens,
            at: 0,
        };
        let v = parser.binary(0);
        if parser.at != tokens.len() {
            parser.fail("trailing tokens");
        }
        v
    }
}

fn tokenize<'e>(template: &str, expr: &'e str) -> Vec<&'e str> {
    let mut tokens = Vec::new();
    let mut rest = expr.trim_start();
    while !rest.is_empty() {
        let len = if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        } else if ["<<", ">>", "==", "!=", "<=", ">="]
            .iter()
            .any(|op| rest.starts_with(op))
        {
            2
        } else if rest.starts_with(|c| "+-*/%<>()".contains(c)) {
            1
        } else {
            panic!("{template}: unexpected character in `{{{{{expr}}}}}`");
        };
        tokens.push(&rest[..len]);
        rest = rest[len..].trim_start();
    }
    tokens
}

/// Binary operators by precedence, loosest first (Rust's order).
const LEVELS: [&[&str]; 4] = [
    &["==", "!=", "<", "<=", ">", ">="],
    &["<<", ">>"],
    &["+", "-"],
    &["*", "/", "%"],
];

/// Precedence climbing over the tokens of one expression.
struct Parser<'p, 'e> {
    scope: &'p Scope<'p>,
    expr: &'e str,
    tokens: &'p [&'e str],
    at: usize,
}

impl Parser<'_, '_> {
    fn fail(&self, why: &str) -> ! {
        panic!("{}: {why} in `{{{{{}}}}}`", self.scope.template, self.expr)
    }

    fn binary(&mut self, level: usize) -> i64 {
        if level == LEVELS.len() {
            return self.atom();
        }
        let mut v = self.binary(level + 1);
        while let Some(&op) = self.tokens.get(self.at) {
            if !LEVELS[level].contains(&op) {
                break;
            }
            self.at += 1;
            let r = self.binary(level + 1);
            v = match op {
                "==" => (v == r) as i64,
                "!=" => (v != r) as i64,
                "<" => (v < r) as i64,
                "<=" => (v <= r) as i64,
                ">" => (v > r) as i64,
                ">=" => (v >= r) as i64,
                "<<" => v << r,
                ">>" => v >> r,
                "+" => v + r,
                "-" => v - r,
                "*" => v * r,
                "/" | "%" if r == 0 => self.fail("division by zero"),
                "/" => v / r,
                _ => v % r,
            };
        }
        v
    }

    fn atom(&mut self) -> i64 {
        let Some(&token) = self.tokens.get(self.at) else {
            self.fail("missing operand")
        };
        self.at += 1;
        if token == "(" {
            let v = self.binary(0);
            if self.tokens.get(self.at) != Some(&")") {
                self.fail("unbalanced parentheses");
            }
            self.at += 1;
            return v;
        }
        if let Ok(v) = token.parse() {
            return v;
        }
        match self.scope.values.get(token) {
            Some(Value::Int(v)) => *v,
            Some(Value::Text(_)) => self.fail(&format!("`{token}` is text, not a number")),
            None => self.fail(&format!("`{token}` is not bound")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(text: &'static str, values: &[(&str, Value<'_>)]) -> String {
        ShaderTemplate {
            name: "test",
            source: text,
        }
        .expand(values)
    }

    #[test]
    fn substitutes_text_and_evaluates_expressions() {
        let got = expand(
            "fn {{NAME}}() -> u32 { return {{(N + 1) * 2 % 5}}u + {{1 << N}}u; }",
            &[("NAME", "f".into()), ("N", 3usize.into())],
        );
        assert_eq!(got, "fn f() -> u32 { return 3u + 8u; }");
        assert_eq!(expand("{{2 + 3 * 4 == 14}}{{8 >> 1 + 1}}", &[]), "12");
    }

    #[test]
    fn block_markers_alone_on_a_line_take_the_line_with_them() {
        let text =
            "a\n{{#for i in 0..N}}\n  v{{i}}_{{#if i == 1}}one{{#else}}x{{/if}}\n  {{/for}}\nb\n";
        let got = expand(text, &[("N", 3usize.into())]);
        assert_eq!(got, "a\n  v0_x\n  v1_one\n  v2_x\nb\n");
    }

    #[test]
    fn loops_nest_and_restore_the_names_they_shadow() {
        let text = "{{#for i in 0..2}}{{#for j in i..2}}{{i}}{{j}} {{/for}}{{/for}}{{i}}";
        assert_eq!(expand(text, &[("i", 7usize.into())]), "00 01 11 7");
        assert_eq!(expand("{{#for i in 3..3}}x{{/for}}", &[]), "");
    }

    #[test]
    #[should_panic(expected = "`M` is not bound")]
    fn an_unbound_name_panics() {
        expand("{{M + 1}}", &[]);
    }

    #[test]
    #[should_panic(expected = "not closed")]
    fn an_unclosed_loop_panics() {
        expand("{{#for i in 0..2}}x", &[]);
    }
}
