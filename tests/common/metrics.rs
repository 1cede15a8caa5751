//! Prometheus text exposition format (0.0.4), parsed strictly.

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape. [`Scrape::parse`] rejects anything a Prometheus server would:
/// bad metric or label names, bad quoting, unparsable values, samples without
/// a preceding `# TYPE`, a family declared twice, and histograms whose buckets
/// are not cumulative or whose `+Inf` bucket differs from `_count`.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub types: std::collections::HashMap<String, String>,
}

pub(crate) fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

pub(crate) fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

pub(crate) fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|e| format!("value {s:?}: {e}")),
    }
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Scrape::default();
        let mut helped = std::collections::HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let kw = parts.next().unwrap_or_default();
                let name = parts
                    .next()
                    .ok_or_else(|| err("comment without a name".into()))?;
                if !is_metric_name(name) {
                    return Err(err(format!("bad metric name {name:?}")));
                }
                match kw {
                    "HELP" if !helped.insert(name.to_owned()) => {
                        return Err(err("second HELP for a family".into()));
                    }
                    "TYPE" => {
                        let t = parts.next().unwrap_or_default();
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                            return Err(err(format!("bad type {t:?}")));
                        }
                        if out.types.insert(name.to_owned(), t.to_owned()).is_some() {
                            return Err(err("second TYPE for a family".into()));
                        }
                    }
                    _ => {}
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            if !is_metric_name(name) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            let mut labels = std::collections::BTreeMap::new();
            let mut rest = &line[name_end..];
            if let Some(r) = rest.strip_prefix('{') {
                let mut chars = r.char_indices().peekable();
                loop {
                    match chars.peek() {
                        Some((i, '}')) => {
                            rest = &r[i + 1..];
                            break;
                        }
                        Some(_) => {}
                        None => return Err(err("unclosed label set".into())),
                    }
                    let start = chars.peek().map(|(i, _)| *i).unwrap_or_default();
                    let mut end = start;
                    for (i, c) in chars.by_ref() {
                        if c == '=' {
                            end = i;
                            break;
                        }
                    }
                    let key = &r[start..end];
                    if !is_label_name(key) {
                        return Err(err(format!("bad label name {key:?}")));
                    }
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err(err("label value not quoted".into()));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, '\\')) => value.push('\\'),
                                Some((_, '"')) => value.push('"'),
                                _ => return Err(err("bad escape".into())),
                            },
                            Some((_, '"')) => break,
                            Some((_, c)) => value.push(c),
                            None => return Err(err("unterminated label value".into())),
                        }
                    }
                    if labels.insert(key.to_owned(), value).is_some() {
                        return Err(err(format!("label {key} twice")));
                    }
                    if let Some((_, ',')) = chars.peek() {
                        chars.next();
                    }
                }
            }
            let mut fields = rest.trim_start().split(' ');
            let value = parse_value(fields.next().unwrap_or_default()).map_err(err)?;
            if let Some(ts) = fields.next() {
                ts.parse::<i64>()
                    .map_err(|e| err(format!("timestamp: {e}")))?;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| {
                    name.strip_suffix(suf)
                        .filter(|f| out.types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(name);
            if !out.types.contains_key(family) {
                return Err(err(format!("sample before the TYPE of {family}")));
            }
            out.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        out.check_histograms()?;
        Ok(out)
    }

    fn check_histograms(&self) -> Result<(), String> {
        for (family, t) in &self.types {
            if t != "histogram" {
                continue;
            }
            let bucket = format!("{family}_bucket");
            let count = format!("{family}_count");
            for c in self.samples.iter().filter(|s| s.name == count) {
                let mut buckets: Vec<(f64, f64)> = self
                    .samples
                    .iter()
                    .filter(|s| s.name == bucket)
                    .filter(|s| {
                        let mut l = s.labels.clone();
                        l.remove("le");
                        l == c.labels
                    })
                    .map(|s| (parse_value(&s.labels["le"]).unwrap(), s.value))
                    .collect();
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                    return Err(format!("{family}: buckets not cumulative: {buckets:?}"));
                }
                match buckets.last() {
                    Some((le, n)) if le.is_infinite() && *n == c.value => {}
                    _ => return Err(format!("{family}: +Inf bucket != _count {}", c.value)),
                }
            }
        }
        Ok(())
    }

    /// Samples named `name` whose labels include every pair in `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum over [`Scrape::matching`]; 0 when there is none (a counter that
    /// was never touched).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}
