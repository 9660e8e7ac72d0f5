//! Property tests: the operator algebra over generated criteria trees, and matcher identities.

use portcullis_policy::{Identity, Policy, Request};
use proptest::prelude::*;

// === operator algebra ===

#[derive(Clone, Copy, Debug)]
enum Op {
    And,
    Or,
    Not,
    Nor,
}

#[derive(Clone, Debug)]
enum Tree {
    Accept,
    Reject,
    Block(Op, Vec<Tree>),
}

impl Op {
    fn key(self) -> &'static str {
        match self {
            Op::And => "and",
            Op::Or => "or",
            Op::Not => "not",
            Op::Nor => "nor",
        }
    }
}

/// The reference semantics, straight from the contract.
fn reference(tree: &Tree) -> bool {
    match tree {
        Tree::Accept => true,
        Tree::Reject => false,
        Tree::Block(op, items) => {
            let values: Vec<bool> = items.iter().map(reference).collect();
            match op {
                Op::And => values.iter().all(|v| *v),
                Op::Or => values.iter().any(|v| *v),
                Op::Not => !values.iter().any(|v| *v),
                Op::Nor => !values.iter().all(|v| *v),
            }
        }
    }
}

/// `tree` as one element of an operator list.
fn render(tree: &Tree) -> String {
    match tree {
        Tree::Accept => "{ accept = true }".into(),
        Tree::Reject => "{ reject = true }".into(),
        Tree::Block(op, items) => format!("{{ {} = {} }}", op.key(), render_list(items)),
    }
}

fn render_list(items: &[Tree]) -> String {
    let items: Vec<String> = items.iter().map(render).collect();
    format!("[{}]", items.join(", "))
}

fn policy(block: &str) -> Policy {
    let doc: toml::Table =
        toml::from_str(&format!("policy = {{ allow = {block} }}")).expect("generated TOML parses");
    Policy::parse(&doc["policy"], "policy").expect("generated policy compiles")
}

/// Whether `block` (an inline table of operators) holds for an anonymous request.
fn holds(block: &str) -> bool {
    policy(block).evaluate(&Request::new("GET", "/", 0)).allowed
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::And), Just(Op::Or), Just(Op::Not), Just(Op::Nor)]
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![Just(Tree::Accept), Just(Tree::Reject)];
    leaf.prop_recursive(4, 40, 5, |inner| {
        (op(), prop::collection::vec(inner, 0..5)).prop_map(|(op, items)| Tree::Block(op, items))
    })
}

fn list() -> impl Strategy<Value = Vec<Tree>> {
    prop::collection::vec(tree(), 0..5)
}

proptest! {
    #[test]
    fn nested_trees_follow_the_reference(t in tree()) {
        prop_assert_eq!(holds(&format!("{{ and = [{}] }}", render(&t))), reference(&t));
    }

    #[test]
    fn or_is_the_negation_of_not(l in list()) {
        let l = render_list(&l);
        prop_assert_eq!(holds(&format!("{{ or = {l} }}")), !holds(&format!("{{ not = {l} }}")));
    }

    #[test]
    fn and_is_the_negation_of_nor(l in list()) {
        let l = render_list(&l);
        prop_assert_eq!(holds(&format!("{{ and = {l} }}")), !holds(&format!("{{ nor = {l} }}")));
    }

    #[test]
    fn de_morgan(l in list()) {
        let negated: Vec<Tree> = l.iter().map(|t| Tree::Block(Op::Not, vec![t.clone()])).collect();
        let (l, negated) = (render_list(&l), render_list(&negated));
        // none of L  ==  every element is not matched
        prop_assert_eq!(holds(&format!("{{ not = {l} }}")), holds(&format!("{{ and = {negated} }}")));
        // not all of L  ==  some element is not matched
        prop_assert_eq!(holds(&format!("{{ nor = {l} }}")), holds(&format!("{{ or = {negated} }}")));
    }

    #[test]
    fn not_and_nor_agree_on_one_element(t in tree()) {
        let l = render_list(std::slice::from_ref(&t));
        prop_assert_eq!(holds(&format!("{{ not = {l} }}")), holds(&format!("{{ nor = {l} }}")));
        prop_assert_eq!(holds(&format!("{{ not = {l} }}")), !reference(&t));
    }

    #[test]
    fn several_operators_are_a_conjunction(a in list(), b in list(), x in op(), y in op()) {
        prop_assume!(x.key() != y.key());
        let (a, b) = (render_list(&a), render_list(&b));
        let combined = holds(&format!("{{ {} = {a}, {} = {b} }}", x.key(), y.key()));
        let separate = holds(&format!("{{ {} = {a} }}", x.key())) && holds(&format!("{{ {} = {b} }}", y.key()));
        prop_assert_eq!(combined, separate);
    }
}

// === matchers ===

fn path_allowed(matcher: &str, path: &str) -> bool {
    policy(&format!("{{ and = [ {{ http_path = {matcher} }} ] }}"))
        .evaluate(&Request::new("GET", path, 0))
        .allowed
}

fn quoted_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(", "))
}

const TEXT: &str = "[a-cA-C0-9/._-]{0,8}";

proptest! {
    #[test]
    fn in_is_any_is(s in TEXT, l in prop::collection::vec(TEXT, 0..6)) {
        let any_is = l.iter().any(|item| path_allowed(&format!("{{ is = {item:?} }}"), &s));
        prop_assert_eq!(path_allowed(&format!("{{ in = {} }}", quoted_list(&l)), &s), any_is);
        prop_assert_eq!(any_is, l.contains(&s));
    }

    #[test]
    fn not_in_is_not_in(s in TEXT, l in prop::collection::vec(TEXT, 0..6)) {
        let l = quoted_list(&l);
        prop_assert_eq!(
            path_allowed(&format!("{{ not_in = {l} }}"), &s),
            !path_allowed(&format!("{{ in = {l} }}"), &s)
        );
    }

    #[test]
    fn not_is_not_is(s in TEXT, t in TEXT) {
        prop_assert_eq!(path_allowed(&format!("{{ not = {t:?} }}"), &s), !path_allowed(&format!("{{ is = {t:?} }}"), &s));
        prop_assert_eq!(path_allowed(&format!("{t:?}"), &s), s == t, "a bare string means is");
    }

    #[test]
    fn substrings_match(s in TEXT, i in 0usize..9, j in 0usize..9) {
        let (i, j) = (i.min(s.len()), j.min(s.len()));
        let (lo, hi) = (i.min(j), i.max(j));
        let (prefix, suffix, middle) = (&s[..i], &s[i..], &s[lo..hi]);
        let starts = path_allowed(&format!("{{ starts_with = {prefix:?} }}"), &s);
        let ends = path_allowed(&format!("{{ ends_with = {suffix:?} }}"), &s);
        let contains = path_allowed(&format!("{{ contains = {middle:?} }}"), &s);
        let (head, tail) = (&s[..lo], &s[hi..]);
        let both = path_allowed(&format!("{{ starts_with = {head:?}, ends_with = {tail:?} }}"), &s);
        prop_assert!(starts && ends && contains && both);
    }

    #[test]
    fn matchers_agree_with_std(s in TEXT, t in TEXT) {
        prop_assert_eq!(path_allowed(&format!("{{ starts_with = {t:?} }}"), &s), s.starts_with(&t));
        prop_assert_eq!(path_allowed(&format!("{{ ends_with = {t:?} }}"), &s), s.ends_with(&t));
        prop_assert_eq!(path_allowed(&format!("{{ contains = {t:?} }}"), &s), s.contains(&t));
    }

    #[test]
    fn http_method_ignores_ascii_case(m in "[a-zA-Z]{1,7}", l in prop::collection::vec("[a-zA-Z]{1,7}", 0..5)) {
        let p = policy(&format!("{{ and = [ {{ http_method = {{ in = {} }} }} ] }}", quoted_list(&l)));
        let expected = l.iter().any(|x| x.eq_ignore_ascii_case(&m));
        prop_assert_eq!(p.evaluate(&Request::new(&m, "/", 0)).allowed, expected);
        let c = policy(&format!("{{ and = [ {{ http_method = {{ contains = {:?} }} }} ] }}", m.to_lowercase()));
        prop_assert!(c.evaluate(&Request::new(&m.to_uppercase(), "/", 0)).allowed);
    }

    #[test]
    fn email_ignores_case(local in "[a-z0-9.]{1,8}", domain in "[a-z]{1,8}\\.[a-z]{2,3}", flips in prop::collection::vec(any::<bool>(), 24)) {
        let email = format!("{local}@{domain}");
        let shouted: String = email
            .chars()
            .zip(flips.iter().cycle())
            .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
            .collect();
        let id = Identity::new("u".into(), shouted.clone(), vec![], Default::default());
        let request = Request::new("GET", "/", 0).with_identity(&id);
        let (upper_email, upper_domain) = (shouted.to_uppercase(), domain.to_uppercase());
        let lower = policy(&format!("{{ and = [ {{ email = {email:?} }} ] }}")).evaluate(&request).allowed;
        let upper = policy(&format!("{{ and = [ {{ email = {upper_email:?} }} ] }}")).evaluate(&request).allowed;
        let by_domain = policy(&format!("{{ and = [ {{ domain = {upper_domain:?} }} ] }}")).evaluate(&request).allowed;
        prop_assert!(lower && upper && by_domain);
    }

    #[test]
    fn groups_is_is_set_equality(groups in prop::collection::vec("[a-d]", 0..5), expected in prop::collection::vec("[a-d]", 0..5)) {
        let id = Identity::new("u".into(), "u@x.y".into(), groups.clone(), Default::default());
        let request = Request::new("GET", "/", 0).with_identity(&id);
        let p = policy(&format!("{{ and = [ {{ groups = {{ is = {} }} }} ] }}", quoted_list(&expected)));
        let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
        prop_assert_eq!(p.evaluate(&request).allowed, set(&groups) == set(&expected));
    }
}
