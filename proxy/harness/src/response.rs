//! Small readers for what the tests look at in answers: redirects, cookies, query parameters
//! and Prometheus text.

/// The `Location` header (empty when there is none).
pub fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Every `Set-Cookie` header of `resp`.
pub fn set_cookies(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

/// The value of query parameter `name` in `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The value of metric `name` in Prometheus text; `name` includes its labels when it has any
/// (`portcullis_streams_closed_total{reason="policy"}`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_found_by_their_whole_name() {
        let text = "# HELP x\nportcullis_a 1\nportcullis_a_total 2\nportcullis_b{r=\"x\"} 3.5\n";
        assert_eq!(metric(text, "portcullis_a"), Some(1.0));
        assert_eq!(metric(text, "portcullis_a_total"), Some(2.0));
        assert_eq!(metric(text, "portcullis_b{r=\"x\"}"), Some(3.5));
        assert_eq!(metric(text, "portcullis_b"), None);
    }

    #[test]
    fn query_params_are_decoded() {
        let url = "http://a.localhost/x?state=a%20b&n=1";
        assert_eq!(query_param(url, "state").as_deref(), Some("a b"));
        assert_eq!(query_param(url, "missing"), None);
        assert_eq!(query_param("not a url", "n"), None);
    }
}
