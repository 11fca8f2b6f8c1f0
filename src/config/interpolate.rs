//! `${NAME}` and `${NAME:-default}` in a pipeline file, from the environment.

/// Replaces `${NAME}` with the environment variable NAME and `${NAME:-default}` with it or the
/// default, so one pipeline file serves every environment. `$${` is a literal `${`.
/// Errors name the variable, never its value.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        // YAML comments stay as written: a commented-out `${VAR}` needs no variable.
        let (code, comment) = line.split_at(comment_start(line));
        out.push_str(&interpolate_code(code, &lookup)?);
        out.push_str(comment);
    }
    Ok(out)
}

/// Where a YAML comment starts on `line` (its length when there is none): a `#` at the start
/// or after whitespace, outside quotes.
fn comment_start(line: &str) -> usize {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && previous != '\\' => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return i,
            _ => {}
        }
        previous = c;
    }
    line.len()
}

fn interpolate_code(
    text: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "a `${` has no closing `}`".to_string())?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{expr}}}` is not a variable reference (use ${{NAME}} or ${{NAME:-default}})"
            ));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (referenced as ${{{name}}}; set it or write ${{{name}:-default}})"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_in_comments_are_left_alone() {
        let text = "url: ${URL} # or ${OTHER}\n# key: ${UNSET}\nname: \"a # b ${URL}\"\n";
        let out = interpolate(text, |n| (n == "URL").then(|| "http://x".to_string())).unwrap();
        assert_eq!(
            out,
            "url: http://x # or ${OTHER}\n# key: ${UNSET}\nname: \"a # b http://x\"\n"
        );
    }

    #[test]
    fn environment_references_are_replaced_and_a_missing_one_is_named() {
        let env = |n: &str| (n == "BROKERS").then(|| "k1:9092".to_string());
        assert_eq!(interpolate("a: ${BROKERS}", env).unwrap(), "a: k1:9092");
        assert_eq!(
            interpolate("a: ${REGION:-eu-west-1}", env).unwrap(),
            "a: eu-west-1"
        );
        assert_eq!(interpolate("a: $${BROKERS}", env).unwrap(), "a: ${BROKERS}");
        let err = interpolate("a: ${SECRET_TOKEN}", env).unwrap_err();
        assert!(err.contains("SECRET_TOKEN is not set"), "{err}");
        assert!(interpolate("a: ${oops", env).is_err());
    }
}
