//! A segment rule compiled once into a plan over the profile's fields: an event then costs a
//! few field lookups and comparisons instead of a CEL context (a map of every bound field,
//! rebuilt per event) and a walk of the interpreter's tree.
//!
//! The plan is exact or silent. It covers the operators segment rules are written with
//! (comparisons, `&&`, `||`, `!`, `? :`, `in` a constant list, `-` and `+` on numbers,
//! timestamps and durations, `map["key"]`, `record.field`, constants such as
//! `duration("2160h")`, which the interpreter itself folds at compile time) with the
//! interpreter's semantics, including its cross-type numeric comparisons. Whatever it does not
//! cover, and every case where the interpreter would fail (a null compared with a number, a
//! missing map key, an overflow), is *undecided*: the caller asks the interpreter, so results
//! and error messages are the interpreter's own. A property test in `segments.rs` compares the
//! two on generated rules and events.

use crate::event::Region;
use crate::schema::FieldKind;
use cel::common::ast::operators;
use cel::common::ast::{Expr, LiteralValue};
use cel::parser::Expression;
use cel::{Context, Env, Value};
use chrono::{DateTime, FixedOffset, TimeDelta};
use serde_json::{Map, Value as Json};
use std::cmp::Ordering;
use std::sync::Arc;

/// What a rule's name stands for.
#[derive(Clone, Debug)]
pub(super) enum Source {
    /// A profile field: its path (one or two names) and kind.
    Field { path: Vec<String>, kind: FieldKind },
    /// A derived region field.
    Derived(String),
    /// The event's `occurred_at`.
    Now,
    /// A record, bound as a map of its non-PII leaves (the leaf names, with their kinds).
    Record {
        name: String,
        leaves: Vec<(String, FieldKind)>,
    },
}

/// The values a plan reads for one event.
pub(super) struct Fields<'a> {
    pub profile: &'a Map<String, Json>,
    pub region: &'a Region,
    pub now: DateTime<FixedOffset>,
}

pub(super) struct Plan {
    root: Node,
}

#[derive(Debug)]
enum Node {
    Const(Const),
    List(Vec<Const>),
    Field {
        path: Vec<String>,
        kind: FieldKind,
    },
    Derived(String),
    Now,
    /// A record as a whole: null when absent, otherwise a map the plan does not look into.
    Record(String),
    /// `record.leaf`: the interpreter fails on an absent record, and reads null for a leaf
    /// missing from a present one.
    Leaf {
        record: String,
        leaf: String,
        kind: FieldKind,
    },
    /// `map_field["key"]`.
    Index {
        map: Vec<String>,
        key: String,
    },
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Eq(Box<Node>, Box<Node>),
    Ne(Box<Node>, Box<Node>),
    Cmp(Box<Node>, Box<Node>, fn(Ordering) -> bool),
    In(Box<Node>, Vec<Const>),
    Add(Box<Node>, Box<Node>),
    Sub(Box<Node>, Box<Node>),
    Neg(Box<Node>),
}

#[derive(Debug, Clone)]
enum Const {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
    Ts(DateTime<FixedOffset>),
    Dur(TimeDelta),
}

/// A value during evaluation; strings borrow from the plan or the event.
#[derive(Debug, Clone, Copy)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(&'a str),
    Ts(DateTime<FixedOffset>),
    Dur(TimeDelta),
    /// A map, list or record: only the interpreter compares or combines these.
    Other,
}

/// The plan cannot say what the interpreter would: let it decide.
struct Undecided;

type R<'a> = Result<V<'a>, Undecided>;

impl Plan {
    /// The plan of a rule, or `None` when it uses something the plan does not cover.
    pub(super) fn compile(
        expr: &Expression,
        names: &dyn Fn(&str) -> Option<Source>,
        env: &Arc<Env>,
    ) -> Option<Plan> {
        Some(Plan {
            root: node(expr, names, env)?,
        })
    }

    /// `Some(result)` when the plan decides the rule for these fields (the interpreter would
    /// return the same boolean), `None` when the interpreter must.
    pub(super) fn decide(&self, fields: &Fields<'_>) -> Option<bool> {
        match eval(&self.root, fields) {
            Ok(V::Bool(b)) => Some(b),
            _ => None,
        }
    }
}

fn constant(v: &Value) -> Option<Const> {
    Some(match v {
        Value::Null => Const::Null,
        Value::Bool(b) => Const::Bool(*b),
        Value::Int(i) => Const::Int(*i),
        Value::UInt(u) => Const::UInt(*u),
        Value::Float(f) => Const::Double(*f),
        Value::String(s) => Const::Str(s.as_str().to_string()),
        Value::Timestamp(t) => Const::Ts(*t),
        Value::Duration(d) => Const::Dur(*d),
        _ => return None,
    })
}

fn has_names(expr: &Expression) -> bool {
    match &expr.expr {
        Expr::Ident(_) | Expr::Comprehension(_) | Expr::Struct(_) | Expr::Unspecified => true,
        Expr::Literal(_) => false,
        Expr::Select(s) => has_names(&s.operand),
        Expr::Call(c) => c.target.as_deref().is_some_and(has_names) || c.args.iter().any(has_names),
        Expr::List(l) => l.elements.iter().any(has_names) || !l.optional_indices.is_empty(),
        // Map literals are left to the interpreter.
        Expr::Map(_) => true,
        #[allow(unreachable_patterns)]
        _ => true,
    }
}

fn node(expr: &Expression, names: &dyn Fn(&str) -> Option<Source>, env: &Arc<Env>) -> Option<Node> {
    // A part that reads no name is folded by the interpreter itself: `duration("2160h")`,
    // `["pro", "enterprise"]`, `-1`.
    if !has_names(expr) {
        let context = Context::with_env(env.clone());
        return match Value::resolve(expr, &context).ok()? {
            Value::List(items) => Some(Node::List(
                items.iter().map(constant).collect::<Option<Vec<_>>>()?,
            )),
            v => Some(Node::Const(constant(&v)?)),
        };
    }
    let boxed = |e: &Expression| node(e, names, env).map(Box::new);
    match &expr.expr {
        Expr::Ident(name) => Some(match names(name)? {
            Source::Field { path, kind } => Node::Field { path, kind },
            Source::Derived(n) => Node::Derived(n),
            Source::Now => Node::Now,
            Source::Record { name, .. } => Node::Record(name),
        }),
        Expr::Select(select) if !select.test => {
            let Expr::Ident(record) = &select.operand.expr else {
                return None;
            };
            let Source::Record { name, leaves } = names(record)? else {
                return None;
            };
            let (leaf, kind) = leaves.into_iter().find(|(l, _)| *l == select.field)?;
            Some(Node::Leaf {
                record: name,
                leaf,
                kind,
            })
        }
        Expr::Call(call) if call.target.is_none() => {
            let args = &call.args;
            let f = call.func_name.as_str();
            Some(match (f, args.as_slice()) {
                (operators::LOGICAL_AND, [a, b]) => Node::And(boxed(a)?, boxed(b)?),
                (operators::LOGICAL_OR, [a, b]) => Node::Or(boxed(a)?, boxed(b)?),
                (operators::LOGICAL_NOT, [a]) => Node::Not(boxed(a)?),
                (operators::CONDITIONAL, [c, a, b]) => Node::Cond(boxed(c)?, boxed(a)?, boxed(b)?),
                (operators::EQUALS, [a, b]) => Node::Eq(boxed(a)?, boxed(b)?),
                (operators::NOT_EQUALS, [a, b]) => Node::Ne(boxed(a)?, boxed(b)?),
                (operators::LESS, [a, b]) => Node::Cmp(boxed(a)?, boxed(b)?, Ordering::is_lt),
                (operators::LESS_EQUALS, [a, b]) => {
                    Node::Cmp(boxed(a)?, boxed(b)?, Ordering::is_le)
                }
                (operators::GREATER, [a, b]) => Node::Cmp(boxed(a)?, boxed(b)?, Ordering::is_gt),
                (operators::GREATER_EQUALS, [a, b]) => {
                    Node::Cmp(boxed(a)?, boxed(b)?, Ordering::is_ge)
                }
                (operators::ADD, [a, b]) => Node::Add(boxed(a)?, boxed(b)?),
                (operators::SUBSTRACT, [a, b]) => Node::Sub(boxed(a)?, boxed(b)?),
                (operators::NEGATE, [a]) => Node::Neg(boxed(a)?),
                (operators::IN, [a, list]) => match node(list, names, env)? {
                    Node::List(items) => Node::In(boxed(a)?, items),
                    _ => return None,
                },
                (operators::INDEX, [map, key]) => {
                    let (Expr::Ident(map), Expr::Literal(LiteralValue::String(key))) =
                        (&map.expr, &key.expr)
                    else {
                        return None;
                    };
                    match names(map)? {
                        Source::Field {
                            path,
                            kind: FieldKind::Map,
                        } => Node::Index {
                            map: path,
                            key: key.inner().to_string(),
                        },
                        _ => return None,
                    }
                }
                _ => return None,
            })
        }
        _ => None,
    }
}

fn of_const(c: &Const) -> V<'_> {
    match c {
        Const::Null => V::Null,
        Const::Bool(b) => V::Bool(*b),
        Const::Int(i) => V::Int(*i),
        Const::UInt(u) => V::UInt(*u),
        Const::Double(d) => V::Double(*d),
        Const::Str(s) => V::Str(s),
        Const::Ts(t) => V::Ts(*t),
        Const::Dur(d) => V::Dur(*d),
    }
}

/// A JSON value as the segment stage binds it (`to_cel` in `segments.rs`).
fn of_json(json: &Json, kind: FieldKind) -> V<'_> {
    match (kind, json) {
        (_, Json::Null) => V::Null,
        (FieldKind::Timestamp, Json::String(s)) => {
            DateTime::parse_from_rfc3339(s).map_or(V::Null, V::Ts)
        }
        (FieldKind::Double, Json::Number(n)) => V::Double(n.as_f64().unwrap_or_default()),
        (_, Json::Number(n)) => n
            .as_i64()
            .map_or_else(|| V::Double(n.as_f64().unwrap_or_default()), V::Int),
        (_, Json::Bool(b)) => V::Bool(*b),
        (_, Json::String(s)) => V::Str(s),
        (_, Json::Array(_) | Json::Object(_)) => V::Other,
    }
}

fn lookup<'a>(profile: &'a Map<String, Json>, path: &[String]) -> Option<&'a Json> {
    match path {
        [top] => profile.get(top),
        [record, leaf] => profile.get(record).and_then(|r| r.get(leaf)),
        _ => None,
    }
}

fn truth(v: R<'_>) -> Result<bool, Undecided> {
    match v? {
        V::Bool(b) => Ok(b),
        _ => Err(Undecided),
    }
}

fn eval<'a>(node: &'a Node, f: &Fields<'a>) -> R<'a> {
    Ok(match node {
        Node::Const(c) => of_const(c),
        Node::List(_) => V::Other,
        Node::Field { path, kind } => {
            lookup(f.profile, path).map_or(V::Null, |j| of_json(j, *kind))
        }
        Node::Derived(name) => f.region.field(name).map_or(V::Null, V::Str),
        Node::Now => V::Ts(f.now),
        Node::Record(name) => match f.profile.get(name) {
            None | Some(Json::Null) => V::Null,
            Some(_) => V::Other,
        },
        Node::Leaf { record, leaf, kind } => match f.profile.get(record) {
            None | Some(Json::Null) => return Err(Undecided),
            Some(r) => r.get(leaf).map_or(V::Null, |j| of_json(j, *kind)),
        },
        Node::Index { map, key } => match lookup(f.profile, map) {
            Some(Json::Object(m)) => of_json(m.get(key).ok_or(Undecided)?, FieldKind::String),
            _ => return Err(Undecided),
        },
        // `&&` and `||` as the interpreter has them: the left side decides when it is the
        // absorbing value; otherwise the right side must be a boolean, and it absorbs an error
        // on the left only when it is the absorbing value itself.
        Node::And(a, b) => {
            let left = truth(eval(a, f));
            if matches!(left, Ok(false)) {
                return Ok(V::Bool(false));
            }
            match (left, eval(b, f)?) {
                (Ok(true), V::Bool(r)) => V::Bool(r),
                (Err(_), V::Bool(false)) => V::Bool(false),
                _ => return Err(Undecided),
            }
        }
        Node::Or(a, b) => {
            let left = truth(eval(a, f));
            if matches!(left, Ok(true)) {
                return Ok(V::Bool(true));
            }
            match (left, eval(b, f)?) {
                (Ok(false), V::Bool(r)) => V::Bool(r),
                (Err(_), V::Bool(true)) => V::Bool(true),
                _ => return Err(Undecided),
            }
        }
        Node::Not(a) => V::Bool(!truth(eval(a, f))?),
        Node::Cond(c, a, b) => {
            if truth(eval(c, f))? {
                eval(a, f)?
            } else {
                eval(b, f)?
            }
        }
        Node::Eq(a, b) => V::Bool(equals(eval(a, f)?, eval(b, f)?)?),
        Node::Ne(a, b) => V::Bool(!equals(eval(a, f)?, eval(b, f)?)?),
        Node::Cmp(a, b, holds) => V::Bool(holds(compare(eval(a, f)?, eval(b, f)?)?)),
        Node::In(a, items) => {
            let needle = eval(a, f)?;
            let mut found = false;
            for item in items {
                if equals(of_const(item), needle)? {
                    found = true;
                    break;
                }
            }
            V::Bool(found)
        }
        Node::Add(a, b) => add(eval(a, f)?, eval(b, f)?)?,
        Node::Sub(a, b) => sub(eval(a, f)?, eval(b, f)?)?,
        Node::Neg(a) => match eval(a, f)? {
            V::Int(i) => V::Int(i.checked_neg().ok_or(Undecided)?),
            V::Double(d) => V::Double(-d),
            _ => return Err(Undecided),
        },
    })
}

/// The interpreter's `==`: numbers compare across int, uint and double; anything else only
/// with its own type; null only equals null.
fn equals(a: V<'_>, b: V<'_>) -> Result<bool, Undecided> {
    Ok(match (a, b) {
        (V::Other, _) | (_, V::Other) => return Err(Undecided),
        (V::Null, V::Null) => true,
        (V::Bool(x), V::Bool(y)) => x == y,
        (V::Str(x), V::Str(y)) => x == y,
        (V::Ts(x), V::Ts(y)) => x == y,
        (V::Dur(x), V::Dur(y)) => x == y,
        (a, b) if is_number(a) && is_number(b) => {
            numeric_order(a, b).is_some_and(|o| o == Ordering::Equal)
        }
        _ => false,
    })
}

fn is_number(v: V<'_>) -> bool {
    matches!(v, V::Int(_) | V::UInt(_) | V::Double(_))
}

/// Ordering of two numbers as the interpreter's comparers have it (`None`: not comparable,
/// a NaN).
fn numeric_order(a: V<'_>, b: V<'_>) -> Option<Ordering> {
    match (a, b) {
        (V::Int(x), V::Int(y)) => Some(x.cmp(&y)),
        (V::UInt(x), V::UInt(y)) => Some(x.cmp(&y)),
        (V::Int(x), V::UInt(y)) => Some(u64::try_from(x).map_or(Ordering::Less, |x| x.cmp(&y))),
        (V::UInt(x), V::Int(y)) => Some(i64::try_from(x).map_or(Ordering::Greater, |x| x.cmp(&y))),
        (V::Double(x), V::Double(y)) => x.partial_cmp(&y),
        (V::Double(x), V::Int(y)) => x.partial_cmp(&(y as f64)),
        (V::Double(x), V::UInt(y)) => x.partial_cmp(&(y as f64)),
        (V::Int(x), V::Double(y)) => (x as f64).partial_cmp(&y),
        (V::UInt(x), V::Double(y)) => (x as f64).partial_cmp(&y),
        _ => None,
    }
}

fn compare(a: V<'_>, b: V<'_>) -> Result<Ordering, Undecided> {
    match (a, b) {
        (V::Str(x), V::Str(y)) => Ok(x.cmp(y)),
        (V::Bool(x), V::Bool(y)) => Ok(x.cmp(&y)),
        (V::Ts(x), V::Ts(y)) => Ok(x.cmp(&y)),
        (V::Dur(x), V::Dur(y)) => Ok(x.cmp(&y)),
        (a, b) => numeric_order(a, b).ok_or(Undecided),
    }
}

/// The interpreter's timestamp range (years 1 to 9999).
fn in_range(t: DateTime<FixedOffset>) -> Result<V<'static>, Undecided> {
    let utc = t.naive_utc();
    let min = chrono::NaiveDate::from_ymd_opt(1, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
    let max = chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 999_999_999));
    match (min, max) {
        (Some(min), Some(max)) if utc >= min && utc <= max => Ok(V::Ts(t)),
        _ => Err(Undecided),
    }
}

/// A duration the interpreter can hold (an i64 count of nanoseconds).
fn duration(d: TimeDelta) -> Result<V<'static>, Undecided> {
    d.num_nanoseconds().map(|_| V::Dur(d)).ok_or(Undecided)
}

fn add<'a>(a: V<'a>, b: V<'a>) -> R<'a> {
    match (a, b) {
        (V::Int(x), V::Int(y)) => x.checked_add(y).map(V::Int).ok_or(Undecided),
        (V::UInt(x), V::UInt(y)) => x.checked_add(y).map(V::UInt).ok_or(Undecided),
        (V::Double(x), V::Double(y)) => Ok(V::Double(x + y)),
        (V::Ts(t), V::Dur(d)) => in_range(t.checked_add_signed(d).ok_or(Undecided)?),
        (V::Dur(x), V::Dur(y)) => duration(x.checked_add(&y).ok_or(Undecided)?),
        _ => Err(Undecided),
    }
}

fn sub<'a>(a: V<'a>, b: V<'a>) -> R<'a> {
    match (a, b) {
        (V::Int(x), V::Int(y)) => x.checked_sub(y).map(V::Int).ok_or(Undecided),
        (V::UInt(x), V::UInt(y)) => x.checked_sub(y).map(V::UInt).ok_or(Undecided),
        (V::Double(x), V::Double(y)) => Ok(V::Double(x - y)),
        (V::Ts(x), V::Ts(y)) => duration(x.signed_duration_since(y)),
        (V::Ts(t), V::Dur(d)) => in_range(t.checked_sub_signed(d).ok_or(Undecided)?),
        (V::Dur(x), V::Dur(y)) => duration(x.checked_sub(&y).ok_or(Undecided)?),
        _ => Err(Undecided),
    }
}
