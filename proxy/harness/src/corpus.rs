//! The open-redirect corpus (`auth/tests/data/open_redirect_payloads.txt`): one payload a line,
//! `# ` comments, placeholders for the allowed host and the characters a text file cannot hold.

const PAYLOADS: &str = include_str!("../../../auth/tests/data/open_redirect_payloads.txt");

/// Every payload of the corpus with `{host}`, `{authority}` (`host:port`) and `{port}` filled
/// in, and `<TAB>`, `<LF>`, `<CR>`, `<NUL>`, `<SP>` replaced by the characters they name.
pub fn open_redirect_payloads(host: &str, authority: &str, port: &str) -> Vec<String> {
    PAYLOADS
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with("# "))
        .map(|line| {
            line.replace("{authority}", authority)
                .replace("{host}", host)
                .replace("{port}", port)
                .replace("<TAB>", "\t")
                .replace("<LF>", "\n")
                .replace("<CR>", "\r")
                .replace("<NUL>", "\0")
                .replace("<SP>", " ")
        })
        .collect()
}
