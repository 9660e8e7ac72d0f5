use std::net::IpAddr;

use serde_json::json;

use super::*;

// === helpers ===

/// Parses `policy = <src>` at path `routes[0].policy`.
fn try_parse(src: &str) -> Result<Policy, Vec<PolicyError>> {
    let doc: toml::Table = toml::from_str(&format!("policy = {src}")).expect("test TOML parses");
    Policy::parse(&doc["policy"], "routes[0].policy")
}

fn parse(src: &str) -> Policy {
    match try_parse(src) {
        Ok(p) => p,
        Err(errors) => panic!("policy {src} failed: {errors:?}"),
    }
}

fn errors(src: &str) -> Vec<String> {
    match try_parse(src) {
        Ok(_) => panic!("policy {src} parsed but should not"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn error(src: &str) -> String {
    let errs = errors(src);
    assert_eq!(errs.len(), 1, "expected one error: {errs:?}");
    errs.into_iter().next().expect("one error")
}

/// A policy allowing exactly when `criterion` matches.
fn criterion(criterion: &str) -> Policy {
    parse(&format!("{{ allow = {{ and = [ {{ {criterion} }} ] }} }}"))
}

fn alice() -> Identity {
    Identity::new(
        "sub-alice".into(),
        "Alice@Example.COM".into(),
        vec!["admins".into(), "dev".into()],
        json!({
            "department": "engineering",
            "roles": ["reader", "writer"],
            "level": 7,
            "ratio": 1.5,
            "staff": true,
            "nothing": null,
            "address": { "country": "NL", "city": "Utrecht" },
            "https://example.com/roles": ["root"],
        })
        .as_object()
        .cloned()
        .expect("object"),
    )
}

fn bob() -> Identity {
    Identity::new(
        "sub-bob".into(),
        "bob@other.org".into(),
        vec![],
        serde_json::Map::new(),
    )
}

/// 2024-01-01T12:00:00Z, a Monday.
const MONDAY_NOON: i64 = 1_704_110_400;

fn get() -> Request<'static> {
    Request::new("GET", "/", MONDAY_NOON)
}

fn as_user(id: &Identity) -> Request<'_> {
    get().with_identity(id)
}

fn allows(policy: &Policy, request: &Request<'_>) -> bool {
    policy.evaluate(request).allowed
}

// === structure ===

#[test]
fn single_rule_table_and_array_both_parse() {
    let one = parse("{ allow = { or = [ { accept = true } ] } }");
    let many = parse("[ { allow = { or = [ { accept = true } ] } } ]");
    assert_eq!(one.len(), 1);
    assert_eq!(many.len(), 1);
    assert!(allows(&one, &get()));
    assert!(allows(&many, &get()));
}

#[test]
fn empty_array_denies_everything() {
    let p = parse("[]");
    let id = alice();
    let d = p.evaluate(&as_user(&id));
    assert_eq!(
        d,
        Decision {
            allowed: false,
            reason: Reason::NoAllowMatched
        }
    );
    assert_eq!(d.explain(&p), "denied: the policy has no rules");
}

#[test]
fn deny_all_and_public() {
    let id = alice();
    assert!(!allows(&Policy::deny_all(), &as_user(&id)));
    assert!(!Policy::deny_all().is_public());
    let public = Policy::public();
    assert!(public.is_public());
    assert_eq!(
        public.evaluate(&get()),
        Decision {
            allowed: true,
            reason: Reason::Public
        }
    );
    assert!(public.evaluate(&get()).explain(&public).contains("public"));
}

#[test]
fn allow_any_authenticated_user_adds_a_rule_and_keeps_denies() {
    let p = parse(r#"{ deny = { or = [ { email = "bob@other.org" } ] } }"#)
        .allow_any_authenticated_user();
    let (a, b) = (alice(), bob());
    assert_eq!(p.evaluate(&as_user(&a)).reason, Reason::Allowed { rule: 1 });
    assert_eq!(p.evaluate(&as_user(&b)).reason, Reason::Denied { rule: 0 });
    assert!(!allows(&p, &get()), "anonymous is not authenticated");
    let p = Policy::deny_all().allow_any_authenticated_user();
    assert!(allows(&p, &as_user(&a)));
    assert!(!allows(&p, &get()));
    assert!(Policy::public().allow_any_authenticated_user().is_public());
    let explained = p.evaluate(&as_user(&a)).explain(&p);
    assert!(explained.contains("authenticated_user"), "{explained}");
}

#[test]
fn allow_and_deny_combine() {
    let p = parse(
        r#"[
          { allow = { or = [ { email = { is = "alice@example.com" } }, { groups = { has = "admins" } } ] } },
          { deny  = { and = [ { http_method = { is = "DELETE" } } ] } },
        ]"#,
    );
    let (a, b) = (alice(), bob());
    assert_eq!(p.evaluate(&as_user(&a)).reason, Reason::Allowed { rule: 0 });
    let delete = Request {
        method: "DELETE",
        ..as_user(&a)
    };
    assert_eq!(
        p.evaluate(&delete),
        Decision {
            allowed: false,
            reason: Reason::Denied { rule: 1 }
        }
    );
    assert_eq!(p.evaluate(&as_user(&b)).reason, Reason::NoAllowMatched);
    assert_eq!(p.evaluate(&get()).reason, Reason::NoAllowMatched);
}

#[test]
fn deny_wins_over_a_later_or_earlier_allow() {
    let p = parse(
        r#"[
          { deny = { or = [ { http_path = { starts_with = "/admin" } } ] } },
          { allow = { or = [ { accept = true } ] } },
          { allow = { or = [ { authenticated_user = true } ] } },
        ]"#,
    );
    let a = alice();
    assert_eq!(
        p.evaluate(&as_user(&a)).reason,
        Reason::Allowed { rule: 1 },
        "first allow reported"
    );
    let admin = Request {
        path: "/admin/x",
        ..as_user(&a)
    };
    assert_eq!(p.evaluate(&admin).reason, Reason::Denied { rule: 0 });
}

#[test]
fn only_deny_rules_deny_everything() {
    let p = parse(r#"{ deny = { or = [ { reject = true } ] } }"#);
    assert_eq!(p.evaluate(&get()).reason, Reason::NoAllowMatched);
    assert_eq!(
        p.evaluate(&get()).explain(&p),
        "denied: no allow rule matched"
    );
}

#[test]
fn explain_names_rule_and_renders_it() {
    let p = parse(
        r#"[ { allow = { or = [ { email = { is = "alice@example.com" } } ] } }, { deny = { and = [ { http_method = "DELETE" } ] } } ]"#,
    );
    let a = alice();
    let d = p.evaluate(&as_user(&a));
    assert_eq!(
        d.explain(&p),
        r#"allowed by rule 0: allow = { or = [{ email = { is = "alice@example.com" } }] }"#
    );
    let d = p.evaluate(&Request {
        method: "delete",
        ..as_user(&a)
    });
    assert_eq!(
        d.explain(&p),
        r#"denied by rule 1: deny = { and = [{ http_method = "DELETE" }] }"#
    );
    assert_eq!(d.reason.to_string(), "denied by rule 1");
    assert!(d
        .explain(&Policy::deny_all())
        .contains("not a rule of this policy"));
}

#[test]
fn explain_truncates_long_rules() {
    let long = "x".repeat(1000);
    let p = parse(&format!(
        r#"{{ allow = {{ or = [ {{ http_path = "{long}" }} ] }} }}"#
    ));
    let d = p.evaluate(&Request {
        path: &format!("/{long}"),
        ..get()
    });
    assert!(d.explain(&p).len() < 400);
    assert!(
        p.rule_text(0).is_some_and(|r| r.len() > 1000),
        "the full rule is kept"
    );
}

// === operators ===

fn op(block: &str) -> bool {
    allows(&parse(&format!("{{ allow = {block} }}")), &get())
}

const T: &str = "{ accept = true }";
const F: &str = "{ reject = true }";

#[test]
fn and_or_not_nor_truth_tables() {
    for (a, av) in [(T, true), (F, false)] {
        for (b, bv) in [(T, true), (F, false)] {
            assert_eq!(op(&format!("{{ and = [{a}, {b}] }}")), av && bv);
            assert_eq!(op(&format!("{{ or = [{a}, {b}] }}")), av || bv);
            assert_eq!(op(&format!("{{ not = [{a}, {b}] }}")), !(av || bv));
            assert_eq!(op(&format!("{{ nor = [{a}, {b}] }}")), !(av && bv));
        }
    }
}

#[test]
fn empty_operator_lists() {
    assert!(op("{ and = [] }"));
    assert!(!op("{ or = [] }"));
    assert!(op("{ not = [] }"));
    assert!(!op("{ nor = [] }"));
}

#[test]
fn several_operators_in_one_block_must_all_hold() {
    assert!(op(&format!(
        "{{ and = [{T}], or = [{F}, {T}], not = [{F}] }}"
    )));
    assert!(!op(&format!(
        "{{ and = [{T}], or = [{F}, {T}], not = [{T}] }}"
    )));
    assert!(!op(&format!("{{ and = [{T}], nor = [{T}] }}")));
}

#[test]
fn nested_operators() {
    assert!(op(&format!("{{ or = [ {{ and = [{T}, {T}] }}, {F} ] }}")));
    assert!(!op(&format!("{{ or = [ {{ and = [{T}, {F}] }}, {F} ] }}")));
    assert!(op(&format!(
        "{{ and = [ {{ not = [ {{ or = [{F}, {F}] }} ] }} ] }}"
    )));
    assert!(op(&format!(
        "{{ and = [ {{ not = [{F}], or = [{T}] }} ] }}"
    )));
    assert!(!op(&format!(
        "{{ and = [ {{ not = [{T}], or = [{T}] }} ] }}"
    )));
    // Three levels deep with real criteria.
    let p = parse(
        r#"{ allow = { and = [
            { authenticated_user = true },
            { or = [ { groups = "admins" }, { and = [ { domain = "other.org" }, { not = [ { http_method = "POST" } ] } ] } ] },
        ] } }"#,
    );
    let (a, b) = (alice(), bob());
    assert!(allows(&p, &as_user(&a)));
    assert!(allows(&p, &as_user(&b)));
    assert!(!allows(
        &p,
        &Request {
            method: "POST",
            ..as_user(&b)
        }
    ));
    assert!(allows(
        &p,
        &Request {
            method: "POST",
            ..as_user(&a)
        }
    ));
    assert!(!allows(&p, &get()));
}

// === identity criteria ===

#[test]
fn accept_reject_authenticated_user() {
    let a = alice();
    assert!(allows(&criterion("accept = true"), &get()));
    assert!(!allows(&criterion("reject = true"), &as_user(&a)));
    let auth = criterion("authenticated_user = true");
    assert!(allows(&auth, &as_user(&a)));
    assert!(!allows(&auth, &get()));
}

#[test]
fn identity_criteria_never_match_anonymous_even_negated_matchers() {
    for c in [
        r#"email = { not = "x@y.z" }"#,
        r#"domain = { not_in = ["x"] }"#,
        r#"user = { not = "x" }"#,
        r#"groups = { exclude = "x" }"#,
        r#""claim/department" = { not = "x" }"#,
        r#"email = { ends_with = "" }"#,
    ] {
        assert!(!allows(&criterion(c), &get()), "{c}");
    }
}

#[test]
fn email_is_case_insensitive() {
    let a = alice();
    for c in [
        r#"email = "alice@example.com""#,
        r#"email = "ALICE@EXAMPLE.COM""#,
        r#"email = { is = "Alice@example.com" }"#,
        r#"email = { ends_with = "@EXAMPLE.com" }"#,
        r#"email = { in = ["bob@x.y", "ALICE@example.com"] }"#,
        r#"email = { contains = "ice@ex" }"#,
        r#"email = { starts_with = "ALI" }"#,
    ] {
        assert!(allows(&criterion(c), &as_user(&a)), "{c}");
    }
    for c in [
        r#"email = "alice@example.org""#,
        r#"email = { not = "alice@EXAMPLE.com" }"#,
        r#"email = { not_in = ["alice@example.com"] }"#,
    ] {
        assert!(!allows(&criterion(c), &as_user(&a)), "{c}");
    }
}

#[test]
fn email_lowercases_unicode() {
    let id = Identity::new(
        "u".into(),
        "ÉMILE@Example.com".into(),
        vec![],
        Default::default(),
    );
    assert!(allows(
        &criterion(r#"email = "émile@example.com""#),
        &as_user(&id)
    ));
    assert_eq!(id.email(), "ÉMILE@Example.com", "original kept");
}

#[test]
fn identity_fields_read_back_from_one_allocation() {
    // Mixed case: the lower-cased email is stored between the email and the name.
    let id = Identity::new(
        "sub-é".into(),
        "Émile@Example.COM".into(),
        vec![],
        Default::default(),
    );
    assert_eq!(
        (id.user(), id.email(), id.name()),
        ("sub-é", "Émile@Example.COM", "")
    );
    let id = id.with_name("Émile Zola".into()).with_name("É. Z.".into());
    assert_eq!(
        (id.user(), id.email(), id.name()),
        ("sub-é", "Émile@Example.COM", "É. Z.")
    );
    let yes = |c: &str, id: &Identity| allows(&criterion(c), &as_user(id));
    assert!(yes(r#"email = "émile@example.com""#, &id));
    assert!(yes(r#"domain = { is = "example.com" }"#, &id));
    assert!(yes(r#"user = "sub-é""#, &id));
    assert!(yes(r#""claim/name" = "É. Z.""#, &id));
    assert_eq!(
        id.heap_bytes(),
        "sub-éÉmile@Example.COMémile@example.comÉ. Z.".len()
    );

    // Lower case already: nothing stored twice; empty fields stay empty.
    let id = Identity::new("u".into(), "a@b.c".into(), vec![], Default::default());
    assert_eq!((id.user(), id.email(), id.name()), ("u", "a@b.c", ""));
    assert_eq!(id.heap_bytes(), "ua@b.c".len());
    assert!(yes(r#"email = "a@b.c""#, &id));
    assert!(yes(r#"domain = { is = "b.c" }"#, &id));
    let empty = Identity::new(String::new(), String::new(), vec![], Default::default());
    assert_eq!((empty.user(), empty.email(), empty.name()), ("", "", ""));
}

#[test]
fn domain_matches_the_email_domain() {
    let (a, b) = (alice(), bob());
    let p = criterion(r#"domain = { is = "example.com" }"#);
    assert!(allows(&p, &as_user(&a)));
    assert!(!allows(&p, &as_user(&b)));
    assert!(allows(
        &criterion(r#"domain = "EXAMPLE.com""#),
        &as_user(&a)
    ));
    assert!(allows(
        &criterion(r#"domain = { ends_with = ".org" }"#),
        &as_user(&b)
    ));
    assert!(
        !allows(&criterion(r#"domain = "example""#), &as_user(&a)),
        "whole domain only"
    );
}

#[test]
fn domain_never_matches_an_email_with_several_ats_or_none() {
    let evil = Identity::new(
        "u".into(),
        "attacker@evil.com@example.com".into(),
        vec![],
        Default::default(),
    );
    let p = criterion(r#"domain = "example.com""#);
    assert!(!allows(&p, &as_user(&evil)));
    assert!(!allows(
        &criterion(r#"domain = "evil.com@example.com""#),
        &as_user(&evil)
    ));
    assert!(!allows(
        &criterion(r#"domain = { not = "x" }"#),
        &as_user(&evil)
    ));
    let none = Identity::new("u".into(), "no-at-sign".into(), vec![], Default::default());
    assert!(!allows(
        &criterion(r#"domain = { not = "x" }"#),
        &as_user(&none)
    ));
    let empty_domain = Identity::new("u".into(), "alice@".into(), vec![], Default::default());
    assert!(!allows(
        &criterion(r#"domain = """#),
        &as_user(&empty_domain)
    ));
    // The email criterion itself still applies to such an address.
    assert!(allows(
        &criterion(r#"email = "attacker@evil.com@example.com""#),
        &as_user(&evil)
    ));
}

#[test]
fn user_is_case_sensitive() {
    let a = alice();
    assert!(allows(&criterion(r#"user = "sub-alice""#), &as_user(&a)));
    assert!(!allows(&criterion(r#"user = "SUB-ALICE""#), &as_user(&a)));
    assert!(allows(
        &criterion(r#"user = { starts_with = "sub-" }"#),
        &as_user(&a)
    ));
}

#[test]
fn groups_list_matchers() {
    let (a, b) = (alice(), bob());
    let yes = |c: &str, id: &Identity| allows(&criterion(c), &as_user(id));
    assert!(yes(r#"groups = "admins""#, &a));
    assert!(yes(r#"groups = { has = "dev" }"#, &a));
    assert!(!yes(r#"groups = { has = "ops" }"#, &a));
    assert!(
        !yes(r#"groups = { has = "Admins" }"#, &a),
        "groups are case-sensitive"
    );
    assert!(yes(r#"groups = { exclude = "ops" }"#, &a));
    assert!(!yes(r#"groups = { exclude = "dev" }"#, &a));
    assert!(
        yes(r#"groups = { exclude = "dev" }"#, &b),
        "no groups excludes everything"
    );
    assert!(
        !yes(r#"groups = { is = "admins" }"#, &a),
        "is = one value needs exactly that list"
    );
    assert!(
        yes(r#"groups = { is = ["dev", "admins"] }"#, &a),
        "order does not matter"
    );
    assert!(
        yes(r#"groups = { is = ["dev", "admins", "dev"] }"#, &a),
        "duplicates do not matter"
    );
    assert!(!yes(r#"groups = { is = ["dev", "admins", "ops"] }"#, &a));
    assert!(!yes(r#"groups = { is = ["dev"] }"#, &a));
    assert!(yes(r#"groups = { is = [] }"#, &b));
    assert!(!yes(r#"groups = { is = [] }"#, &a));
    assert!(yes(r#"groups = { has = "admins", exclude = "ops" }"#, &a));
    assert!(!yes(r#"groups = { has = "admins", exclude = "dev" }"#, &a));
    let one = Identity::new(
        "u".into(),
        "u@x.y".into(),
        vec!["solo".into()],
        Default::default(),
    );
    assert!(yes(r#"groups = { is = "solo" }"#, &one));
}

#[test]
fn claims_string_and_list() {
    let a = alice();
    let yes = |c: &str| allows(&criterion(c), &as_user(&a));
    // String claim: string matchers apply directly, list matchers see a one-element list.
    assert!(yes(r#""claim/department" = "engineering""#));
    assert!(yes(r#""claim/department" = { is = "engineering" }"#));
    assert!(yes(r#""claim/department" = { has = "engineering" }"#));
    assert!(yes(
        r#""claim/department" = { starts_with = "eng", ends_with = "ing" }"#
    ));
    assert!(yes(
        r#""claim/department" = { in = ["sales", "engineering"] }"#
    ));
    assert!(yes(
        r#""claim/department" = { not = "sales", exclude = "hr" }"#
    ));
    assert!(!yes(r#""claim/department" = { not = "engineering" }"#));
    assert!(!yes(r#""claim/department" = { not_in = ["engineering"] }"#));
    assert!(!yes(
        r#""claim/department" = { is = ["engineering", "sales"] }"#
    ));
    // List claim.
    assert!(yes(r#""claim/roles" = "writer""#));
    assert!(yes(r#""claim/roles" = { has = "reader" }"#));
    assert!(!yes(r#""claim/roles" = { has = "admin" }"#));
    assert!(yes(r#""claim/roles" = { is = ["writer", "reader"] }"#));
    assert!(!yes(r#""claim/roles" = { is = "writer" }"#));
    assert!(yes(r#""claim/roles" = { exclude = "admin" }"#));
    assert!(
        yes(r#""claim/roles" = { starts_with = "wri" }"#),
        "some element"
    );
    assert!(
        !yes(r#""claim/roles" = { starts_with = "rea", ends_with = "ter" }"#),
        "one element must satisfy all positives"
    );
    assert!(yes(r#""claim/roles" = { in = ["admin", "reader"] }"#));
    assert!(
        !yes(r#""claim/roles" = { not = "reader" }"#),
        "negatives hold for every element"
    );
    assert!(yes(r#""claim/roles" = { not_in = ["admin", "root"] }"#));
    assert!(!yes(r#""claim/roles" = { not_in = ["admin", "writer"] }"#));
}

#[test]
fn claims_repeating_identity_fields_are_answered_from_the_fields_and_not_stored_twice() {
    let claims = json!({
        "sub": "sub-carol",
        "email": "carol@example.com",
        "name": "Carol",
        "groups": ["ops", "dev"],
        "team": "blue",
    });
    let make = |claims: &serde_json::Value| {
        Identity::new(
            "sub-carol".into(),
            "carol@example.com".into(),
            vec!["ops".into(), "dev".into()],
            claims.as_object().cloned().expect("object"),
        )
        .with_name("Carol".into())
    };
    let carol = make(&claims);
    let bare = make(&json!({ "team": "blue" }));
    assert_eq!(
        carol.heap_bytes(),
        bare.heap_bytes(),
        "the four repeated claims cost nothing"
    );
    assert_eq!(
        carol.claims_json(),
        claims.as_object().cloned().expect("object")
    );
    assert_eq!(bare.claims_json(), carol.claims_json());
    let yes = |c: &str| allows(&criterion(c), &as_user(&bare));
    assert!(yes(r#""claim/email" = "carol@example.com""#));
    assert!(yes(r#""claim/sub" = { starts_with = "sub-" }"#));
    assert!(yes(r#""claim/name" = "Carol""#));
    assert!(yes(r#""claim/groups" = { has = "ops" }"#));
    assert!(yes(r#""claim/groups" = { is = ["dev", "ops"] }"#));
    assert!(!yes(r#""claim/groups" = { has = "admins" }"#));
    assert!(!yes(r#""claim/name" = "Mallory""#));

    // A claim that says something else than the field is kept and wins.
    let other = Identity::new(
        "sub-carol".into(),
        "carol@example.com".into(),
        vec!["ops".into()],
        json!({ "email": "c@alias.example", "groups": "ops" })
            .as_object()
            .cloned()
            .expect("object"),
    )
    .with_name("Carol".into());
    assert!(other.heap_bytes() > bare.heap_bytes());
    assert_eq!(
        other.claim("email"),
        Some(Claim::Json(&json!("c@alias.example")))
    );
    assert_eq!(other.claim("groups"), Some(Claim::Json(&json!("ops"))));
    assert_eq!(other.claim("name"), Some(Claim::Str("Carol")));
    assert_eq!(other.claim("team"), None);
}

#[test]
fn claims_numbers_bools_nested_and_missing() {
    let a = alice();
    let yes = |c: &str| allows(&criterion(c), &as_user(&a));
    assert!(yes(r#""claim/level" = "7""#));
    assert!(yes(r#""claim/level" = 7"#));
    assert!(yes(r#""claim/level" = { in = [6, 7] }"#));
    assert!(yes(r#""claim/ratio" = 1.5"#));
    assert!(yes(r#""claim/staff" = true"#));
    assert!(yes(r#""claim/staff" = { is = "true" }"#));
    assert!(!yes(r#""claim/staff" = false"#));
    assert!(yes(r#""claim/address/country" = "NL""#));
    assert!(!yes(r#""claim/address/country" = "DE""#));
    assert!(
        yes(r#""claim/https://example.com/roles" = "root""#),
        "top-level key with slashes"
    );
    assert!(
        !yes(r#""claim/address" = { not = "x" }"#),
        "a table claim never matches"
    );
    assert!(
        !yes(r#""claim/nothing" = { not = "x" }"#),
        "a null claim never matches"
    );
    assert!(
        !yes(r#""claim/missing" = { not = "x" }"#),
        "a missing claim never matches"
    );
    assert!(!yes(r#""claim/missing" = { exclude = "x" }"#));
    assert!(!yes(r#""claim/address/country/x" = "NL""#));
}

#[test]
fn claim_lookup_prefers_longest_key() {
    let claims = json!({ "a": { "b/c": "inner" }, "a/b": { "c": "outer" } });
    let claims = claims.as_object().expect("object");
    assert_eq!(
        criterion::lookup_claim(claims, "a/b/c"),
        Some(&json!("outer"))
    );
    assert_eq!(
        criterion::lookup_claim(claims, "a/b"),
        Some(&json!({ "c": "outer" }))
    );
}

// === request criteria ===

#[test]
fn http_method_case_insensitive() {
    let p = criterion(r#"http_method = { in = ["get", "HEAD"] }"#);
    assert!(allows(&p, &get()));
    assert!(allows(
        &p,
        &Request {
            method: "head",
            ..get()
        }
    ));
    assert!(!allows(
        &p,
        &Request {
            method: "POST",
            ..get()
        }
    ));
    assert!(allows(&criterion(r#"http_method = "get""#), &get()));
    assert!(allows(
        &criterion(r#"http_method = { not = "post" }"#),
        &get()
    ));
    assert!(!allows(
        &criterion(r#"http_method = { not_in = ["Get"] }"#),
        &get()
    ));
    assert!(allows(
        &criterion(r#"http_method = { contains = "E" }"#),
        &get()
    ));
    assert!(allows(
        &criterion(r#"http_method = { starts_with = "g", ends_with = "T" }"#),
        &get()
    ));
}

#[test]
fn http_path_matchers() {
    let at = |path: &'static str| Request { path, ..get() };
    let yes = |c: &str, path: &'static str| allows(&criterion(c), &at(path));
    assert!(yes(r#"http_path = "/a""#, "/a"));
    assert!(!yes(r#"http_path = "/a""#, "/a/"));
    assert!(
        !yes(r#"http_path = "/A""#, "/a"),
        "paths are case-sensitive"
    );
    assert!(yes(r#"http_path = { starts_with = "/api/" }"#, "/api/v1"));
    assert!(!yes(r#"http_path = { starts_with = "/api/" }"#, "/ap"));
    assert!(yes(r#"http_path = { ends_with = ".json" }"#, "/x.json"));
    assert!(!yes(r#"http_path = { ends_with = ".json" }"#, "json"));
    assert!(yes(r#"http_path = { contains = "/v1/" }"#, "/api/v1/x"));
    assert!(yes(r#"http_path = { not = "/admin" }"#, "/x"));
    assert!(!yes(r#"http_path = { not = "/admin" }"#, "/admin"));
    assert!(yes(r#"http_path = { in = ["/a", "/b"] }"#, "/b"));
    assert!(!yes(r#"http_path = { in = [] }"#, "/b"));
    assert!(yes(r#"http_path = { not_in = [] }"#, "/b"));
    assert!(yes(
        r#"http_path = { starts_with = "/api", not_in = ["/api/admin"] }"#,
        "/api/x"
    ));
    assert!(!yes(
        r#"http_path = { starts_with = "/api", not_in = ["/api/admin"] }"#,
        "/api/admin"
    ));
    assert!(yes(r#"http_path = { ends_with = "é" }"#, "/café"));
    assert!(!yes(r#"http_path = { ends_with = "xé" }"#, "é"));
}

// === errors ===

#[test]
fn unknown_criterion_with_suggestion() {
    assert_eq!(
        error(r#"{ allow = { or = [ { email = "a@b" }, { emial = { is = "a@b" } } ] } }"#),
        r#"routes[0].policy.allow.or[1]: unknown criterion "emial" (did you mean "email"?)"#
    );
    assert_eq!(
        error(
            r#"[ { allow = { or = [ { accept = true } ] } }, { deny = { and = [ { "claims/x" = "y" } ] } } ]"#
        ),
        r#"routes[0].policy[1].deny.and[0]: unknown criterion "claims/x" (did you mean "claim/x"?)"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { zzzzzz = 1 } ] } }"#),
        r#"routes[0].policy.allow.or[0]: unknown criterion "zzzzzz""#
    );
}

#[test]
fn every_error_is_collected() {
    let errs = errors(
        r#"[
          { allow = { or = [ { emial = "a@b" }, { email = { iss = "x" } }, { groups = { contains = "x" } } ] } },
          { alow = { or = [] } },
          { deny = { adn = [ { accept = true } ] } },
          { allow = { and = [ { source_ip = "10.0.0.0/33" }, { time_of_day = { after = "25:00" } } ] } },
        ]"#,
    );
    assert_eq!(
        errs,
        vec![
            r#"routes[0].policy[0].allow.or[0]: unknown criterion "emial" (did you mean "email"?)"#,
            r#"routes[0].policy[0].allow.or[1].email: unknown matcher "iss" (did you mean "is"?)"#,
            r#"routes[0].policy[0].allow.or[2].groups: "contains" is not allowed here: it is a string matcher; groups takes list matchers: has, is, exclude"#,
            r#"routes[0].policy[1]: unknown key "alow" (did you mean "allow"?)"#,
            r#"routes[0].policy[2].deny: unknown operator "adn" (did you mean "and"?)"#,
            r#"routes[0].policy[3].allow.and[0].source_ip: bad IP address or CIDR "10.0.0.0/33": prefix length must be 0 to 32"#,
            r#"routes[0].policy[3].allow.and[1].time_of_day.after: bad time "25:00": expected "HH:MM" or "HH:MM:SS" (24-hour)"#,
        ]
    );
}

#[test]
fn rule_structure_errors() {
    assert_eq!(
        error(r#"{ allow = { or = [] }, deny = { or = [] } }"#),
        "routes[0].policy: a rule has either allow or deny, not both (write two rules)"
    );
    assert_eq!(error("{}"), "routes[0].policy: a rule needs allow or deny");
    assert_eq!(
        error(r#"{ or = [] }"#),
        r#"routes[0].policy: "or" is not allowed here: operators go inside allow or deny, e.g. { allow = { or = [...] } }"#
    );
    assert_eq!(
        error(r#""allow""#),
        "routes[0].policy: expected a rule table or an array of rule tables, found string"
    );
    assert_eq!(
        error(r#"[ 1 ]"#),
        "routes[0].policy[0]: expected a rule table ({ allow = ... } or { deny = ... }), found integer"
    );
    assert_eq!(
        error(r#"{ allow = {} }"#),
        "routes[0].policy.allow: empty block: expected at least one of and, or, not, nor"
    );
    assert_eq!(
        error(r#"{ allow = [] }"#),
        "routes[0].policy.allow: expected a table of operators (and, or, not, nor), found array"
    );
    assert_eq!(
        error(r#"{ allow = { or = { email = "x" } } }"#),
        "routes[0].policy.allow.or: expected an array of criteria, found table"
    );
    assert_eq!(
        error(r#"{ allow = { email = "x" } }"#),
        r#"routes[0].policy.allow: "email" is not allowed here: criteria go inside an operator list, e.g. { and = [{ email = ... }] }"#
    );
}

#[test]
fn criterion_table_errors() {
    assert_eq!(
        error(r#"{ allow = { or = [ { email = "a@b", user = "x" } ] } }"#),
        r#"routes[0].policy.allow.or[0]: a criterion table has exactly one key, found 2: "email", "user" (give each criterion its own table)"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { and = [], email = "x" } ] } }"#),
        r#"routes[0].policy.allow.or[0]: a criterion table has exactly one key, found 2: "and", "email" (give each criterion its own table)"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ {} ] } }"#),
        "routes[0].policy.allow.or[0]: empty table: expected one criterion or an operator"
    );
    assert_eq!(
        error(r#"{ allow = { or = [ "email" ] } }"#),
        r#"routes[0].policy.allow.or[0]: expected a criterion table like { email = { is = "..." } }, found string"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { claim = "x" } ] } }"#),
        r#"routes[0].policy.allow.or[0]: claim needs a name, e.g. "claim/department""#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { "claim/" = "x" } ] } }"#),
        r#"routes[0].policy.allow.or[0]: claim needs a name, e.g. "claim/department""#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { accept = false } ] } }"#),
        "routes[0].policy.allow.or[0].accept: must be true (to negate it, put it in a `not` list)"
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { authenticated_user = "yes" } ] } }"#),
        "routes[0].policy.allow.or[0].authenticated_user: expected true, found string"
    );
    // Errors deep inside nested blocks keep the whole path.
    assert_eq!(
        error(r#"{ allow = { and = [ { or = [ { not = [ { grups = "x" } ] } ] } ] } }"#),
        r#"routes[0].policy.allow.and[0].or[0].not[0]: unknown criterion "grups" (did you mean "groups"?)"#
    );
}

#[test]
fn matcher_errors() {
    assert_eq!(
        error(r#"{ allow = { or = [ { email = { startswith = "a" } } ] } }"#),
        r#"routes[0].policy.allow.or[0].email: unknown matcher "startswith" (did you mean "starts_with"?)"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { email = { has = "a" } } ] } }"#),
        r#"routes[0].policy.allow.or[0].email: "has" is not allowed here: it is a list matcher; this criterion takes string matchers: is, not, contains, starts_with, ends_with, in, not_in"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { email = { is = 3 } } ] } }"#),
        "routes[0].policy.allow.or[0].email.is: expected a string, found integer"
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { email = { in = "a" } } ] } }"#),
        "routes[0].policy.allow.or[0].email.in: expected an array of strings, found string"
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { email = { in = ["a", 2] } } ] } }"#),
        "routes[0].policy.allow.or[0].email.in[1]: expected a string, found integer"
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { email = {} } ] } }"#),
        "routes[0].policy.allow.or[0].email: no matcher: expected one or more of is, not, contains, starts_with, ends_with, in, not_in"
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { email = ["a"] } ] } }"#),
        "routes[0].policy.allow.or[0].email: expected a string or a table of string matchers, found array"
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { groups = { hass = "a" } } ] } }"#),
        r#"routes[0].policy.allow.or[0].groups: unknown matcher "hass" (did you mean "has"?)"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { "claim/x" = { exclud = "a" } } ] } }"#),
        r#"routes[0].policy.allow.or[0]."claim/x": unknown matcher "exclud" (did you mean "exclude"?)"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { "claim/x" = [1] } ] } }"#),
        r#"routes[0].policy.allow.or[0]."claim/x": expected a string, number or boolean, found array"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { groups = { is = ["a", {}] } } ] } }"#),
        "routes[0].policy.allow.or[0].groups.is[1]: expected a string, found table"
    );
}

#[test]
fn policy_error_is_an_error_with_path_and_message() {
    let errs = try_parse(r#"{ allow = { or = [ { emial = "x" } ] } }"#).expect_err("fails");
    let e = &errs[0];
    assert_eq!(e.path, "routes[0].policy.allow.or[0]");
    assert_eq!(
        e.message,
        r#"unknown criterion "emial" (did you mean "email"?)"#
    );
    let as_error: &dyn std::error::Error = e;
    assert_eq!(as_error.to_string(), format!("{}: {}", e.path, e.message));
}

#[test]
fn suggestions_are_case_insensitive_and_not_wild() {
    assert_eq!(error::suggest("EMAIL", ["email", "user"]), Some("email"));
    assert_eq!(error::suggest("domian", ["domain", "user"]), Some("domain"));
    assert_eq!(error::suggest("x", ["is", "not"]), None);
    assert_eq!(error::suggest("banana", ["is", "not", "contains"]), None);
}

#[test]
fn policy_is_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug>() {}
    assert_traits::<Policy>();
    assert_traits::<Identity>();
    assert_traits::<PolicyError>();
}

#[test]
fn header_lookups() {
    let pairs = [("Origin", "https://a"), ("X", "y")];
    assert_eq!(HeaderLookup::get(&pairs, "origin"), Some("https://a"));
    assert_eq!(HeaderLookup::get(&pairs[..], "x"), Some("y"));
    assert_eq!(HeaderLookup::get(&(), "origin"), None);
    let v = vec![("a", "b")];
    assert_eq!(HeaderLookup::get(&v, "A"), Some("b"));
    let mut map = http::HeaderMap::new();
    map.insert("origin", http::HeaderValue::from_static("https://a"));
    assert_eq!(HeaderLookup::get(&map, "origin"), Some("https://a"));
    assert_eq!(
        HeaderLookup::get(&map, "access-control-request-method"),
        None
    );
}

#[test]
fn request_debug_hides_details() {
    let a = alice();
    let shown = format!("{:?}", as_user(&a));
    assert!(
        shown.contains("sub-alice") && !shown.contains("engineering"),
        "{shown}"
    );
}

// === network criteria ===

fn from_ip(addr: &str) -> Request<'static> {
    Request {
        source_ip: Some(addr.parse::<IpAddr>().expect("test address")),
        ..get()
    }
}

#[test]
fn source_ip_v4_v6_cidrs_and_lists() {
    let yes = |c: &str, addr: &str| allows(&criterion(c), &from_ip(addr));
    assert!(yes(r#"source_ip = "10.1.2.3""#, "10.1.2.3"));
    assert!(!yes(r#"source_ip = "10.1.2.3""#, "10.1.2.4"));
    assert!(yes(r#"source_ip = "10.0.0.0/8""#, "10.255.0.1"));
    assert!(!yes(r#"source_ip = "10.0.0.0/8""#, "11.0.0.1"));
    assert!(yes(r#"source_ip = "0.0.0.0/0""#, "203.0.113.9"));
    assert!(
        !yes(r#"source_ip = "0.0.0.0/0""#, "2001:db8::1"),
        "a v4 network holds no v6 address"
    );
    assert!(yes(
        r#"source_ip = ["192.168.0.0/16", "2001:db8::/32"]"#,
        "2001:db8:1::5"
    ));
    assert!(yes(
        r#"source_ip = ["192.168.0.0/16", "2001:db8::/32"]"#,
        "192.168.7.7"
    ));
    assert!(!yes(
        r#"source_ip = ["192.168.0.0/16", "2001:db8::/32"]"#,
        "2001:db9::1"
    ));
    assert!(yes(r#"source_ip = "::1""#, "::1"));
    assert!(yes(r#"source_ip = "::/0""#, "::1"));
    assert!(!yes(r#"source_ip = []"#, "::1"));
    // IPv4-mapped IPv6 peers (dual-stack sockets) match IPv4 networks, and the reverse.
    assert!(yes(r#"source_ip = "10.0.0.0/8""#, "::ffff:10.9.8.7"));
    assert!(!yes(r#"source_ip = "10.0.0.0/8""#, "::ffff:11.9.8.7"));
    assert!(yes(r#"source_ip = "::ffff:10.0.0.0/104""#, "10.1.1.1"));
    // No address known: never matches.
    assert!(!allows(&criterion(r#"source_ip = "0.0.0.0/0""#), &get()));
}

#[test]
fn source_ip_errors() {
    assert_eq!(
        error(r#"{ allow = { or = [ { source_ip = "10.0.0.1/8" } ] } }"#),
        r#"routes[0].policy.allow.or[0].source_ip: bad IP address or CIDR "10.0.0.1/8": host bits are set (did you mean "10.0.0.0/8"?)"#
    );
    assert_eq!(
        errors(
            r#"{ allow = { or = [ { source_ip = ["10.0.0.0/8", "nope", "2001:db8::/129", 4] } ] } }"#
        ),
        vec![
            r#"routes[0].policy.allow.or[0].source_ip[1]: bad IP address or CIDR "nope": not an IP address"#,
            r#"routes[0].policy.allow.or[0].source_ip[2]: bad IP address or CIDR "2001:db8::/129": prefix length must be 0 to 128"#,
            "routes[0].policy.allow.or[0].source_ip[3]: expected a string, found integer",
        ]
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { source_ip = { is = "10.0.0.1" } } ] } }"#),
        "routes[0].policy.allow.or[0].source_ip: expected an IP address or CIDR, or an array of them, found table"
    );
}

#[test]
fn cors_preflight_needs_options_origin_and_requested_method() {
    let p = criterion("cors_preflight = true");
    let both = [
        ("Origin", "https://app.example"),
        ("Access-Control-Request-Method", "PUT"),
    ];
    let origin_only = [("origin", "https://app.example")];
    fn preflight<'a>(method: &'a str, headers: &'a dyn HeaderLookup) -> Request<'a> {
        Request {
            method,
            headers,
            ..get()
        }
    }
    assert!(allows(&p, &preflight("OPTIONS", &both)));
    assert!(allows(&p, &preflight("options", &both)));
    assert!(!allows(&p, &preflight("GET", &both)));
    assert!(!allows(&p, &preflight("OPTIONS", &origin_only)));
    assert!(!allows(&p, &preflight("OPTIONS", &())));
    assert_eq!(
        error(r#"{ allow = { or = [ { cors_preflight = false } ] } }"#),
        "routes[0].policy.allow.or[0].cors_preflight: must be true (to negate it, put it in a `not` list)"
    );
}

// === time criteria ===

fn at(now_unix: i64) -> Request<'static> {
    Request::new("GET", "/", now_unix)
}

/// Unix seconds of an RFC 3339 instant.
fn ts(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>()
        .expect("test timestamp")
        .as_second()
}

#[test]
fn date_after_is_inclusive_before_is_exclusive() {
    let p = criterion(
        r#"date = { after = "2024-01-01T00:00:00Z", before = "2024-02-01T00:00:00+01:00" }"#,
    );
    assert!(!allows(&p, &at(ts("2023-12-31T23:59:59Z"))));
    assert!(allows(&p, &at(ts("2024-01-01T00:00:00Z"))));
    assert!(allows(&p, &at(ts("2024-01-31T22:59:59Z"))));
    assert!(
        !allows(&p, &at(ts("2024-01-31T23:00:00Z"))),
        "the offset is honoured"
    );
    let after_only = criterion(r#"date = { after = 2030-01-01T00:00:00Z }"#);
    assert!(!allows(&after_only, &at(MONDAY_NOON)));
    assert!(allows(&after_only, &at(ts("2031-06-01T00:00:00Z"))));
    let before_only = criterion(r#"date = { before = "2030-01-01T00:00:00.5Z" }"#);
    assert!(
        allows(&before_only, &at(ts("2030-01-01T00:00:00Z"))),
        "00:00:00 is before 00:00:00.5"
    );
    assert!(!allows(&before_only, &at(ts("2030-01-01T00:00:01Z"))));
    let fractional_after = criterion(r#"date = { after = "2030-01-01T00:00:00.5Z" }"#);
    assert!(!allows(&fractional_after, &at(ts("2030-01-01T00:00:00Z"))));
    assert!(allows(&fractional_after, &at(ts("2030-01-01T00:00:01Z"))));
}

#[test]
fn date_errors() {
    assert_eq!(
        error(r#"{ allow = { or = [ { date = { after = "yesterday" } } ] } }"#),
        r#"routes[0].policy.allow.or[0].date.after: bad timestamp "yesterday": expected RFC 3339, e.g. "2025-01-31T09:00:00Z""#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { date = { after = 2024-01-01T00:00:00 } } ] } }"#),
        "routes[0].policy.allow.or[0].date.after: bad timestamp 2024-01-01T00:00:00: needs a date, a time and a UTC offset (RFC 3339)"
    );
    assert_eq!(
        error(
            r#"{ allow = { or = [ { date = { after = "2024-02-01T00:00:00Z", before = "2024-01-01T00:00:00Z" } } ] } }"#
        ),
        "routes[0].policy.allow.or[0].date: after must be earlier than before"
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { date = { afer = "2024-02-01T00:00:00Z" } } ] } }"#),
        r#"routes[0].policy.allow.or[0].date: unknown key "afer" (did you mean "after"?)"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { date = {} } ] } }"#),
        "routes[0].policy.allow.or[0].date: expected after and/or before"
    );
}

#[test]
fn day_of_week_forms() {
    let monday = at(MONDAY_NOON);
    let saturday = at(MONDAY_NOON - 2 * 86_400);
    let yes = |c: &str, r: &Request<'_>| allows(&criterion(c), r);
    assert!(yes(r#"day_of_week = "mon""#, &monday));
    assert!(yes(r#"day_of_week = "Monday""#, &monday));
    assert!(yes(r#"day_of_week = "MON-fri""#, &monday));
    assert!(!yes(r#"day_of_week = "mon-fri""#, &saturday));
    assert!(yes(r#"day_of_week = ["sat", "sun"]"#, &saturday));
    assert!(!yes(r#"day_of_week = ["sat", "sun"]"#, &monday));
    assert!(
        yes(r#"day_of_week = "fri-mon""#, &saturday),
        "ranges wrap around the week"
    );
    assert!(yes(r#"day_of_week = "fri-mon""#, &monday));
    assert!(!yes(
        r#"day_of_week = "fri-mon""#,
        &at(MONDAY_NOON + 86_400)
    ));
    assert!(yes(r#"day_of_week = "tue, sat""#, &saturday));
    assert!(yes(r#"day_of_week = { days = "mon" }"#, &monday));
    // Before the epoch: 1969-12-31 was a Wednesday.
    assert!(yes(r#"day_of_week = "wed""#, &at(-3600)));
}

#[test]
fn day_of_week_in_a_time_zone() {
    // 02:00 UTC on Monday is still Sunday evening in New York and already Monday in Tokyo.
    let early_monday_utc = at(ts("2024-01-01T02:00:00Z"));
    let yes = |c: &str| allows(&criterion(c), &early_monday_utc);
    assert!(yes(
        r#"day_of_week = { days = "sun", timezone = "America/New_York" }"#
    ));
    assert!(!yes(
        r#"day_of_week = { days = "mon", timezone = "America/New_York" }"#
    ));
    assert!(yes(
        r#"day_of_week = { days = "mon", timezone = "Asia/Tokyo" }"#
    ));
    assert!(yes(r#"day_of_week = { days = "mon" }"#));
    // Kiritimati (UTC+14) is a day ahead at noon UTC.
    assert!(allows(
        &criterion(r#"day_of_week = { days = "tue", timezone = "Pacific/Kiritimati" }"#),
        &at(MONDAY_NOON)
    ));
}

#[test]
fn day_of_week_errors() {
    assert_eq!(
        error(r#"{ allow = { or = [ { day_of_week = "funday" } ] } }"#),
        r#"routes[0].policy.allow.or[0].day_of_week: bad day "funday": expected a weekday (mon, tue, wed, thu, fri, sat, sun) or a range like "mon-fri""#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { day_of_week = { days = ["mon", "xyz-fri"] } } ] } }"#),
        r#"routes[0].policy.allow.or[0].day_of_week.days[1]: bad day "xyz-fri": expected a weekday (mon, tue, wed, thu, fri, sat, sun) or a range like "mon-fri""#
    );
    assert_eq!(
        error(
            r#"{ allow = { or = [ { day_of_week = { days = "mon", timezone = "Europe/Amsterdm" } } ] } }"#
        ),
        r#"routes[0].policy.allow.or[0].day_of_week.timezone: unknown time zone "Europe/Amsterdm" (did you mean "Europe/Amsterdam"?)"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { day_of_week = { timezone = "UTC" } } ] } }"#),
        r#"routes[0].policy.allow.or[0].day_of_week: expected days, e.g. days = "mon-fri""#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { day_of_week = [] } ] } }"#),
        "routes[0].policy.allow.or[0].day_of_week: no days given"
    );
}

#[test]
fn time_of_day_ranges() {
    let office = criterion(r#"time_of_day = { after = "09:00", before = "17:00" }"#);
    let day = |hms: &str| at(ts(&format!("2024-01-01T{hms}Z")));
    assert!(!allows(&office, &day("08:59:59")));
    assert!(allows(&office, &day("09:00:00")));
    assert!(allows(&office, &day("16:59:59")));
    assert!(!allows(&office, &day("17:00:00")));
    let night = criterion(r#"time_of_day = { after = "22:00", before = "06:00" }"#);
    for (hms, inside) in [
        ("21:59:59", false),
        ("22:00:00", true),
        ("23:59:59", true),
        ("00:00:00", true),
        ("05:59:59", true),
        ("06:00:00", false),
        ("12:00:00", false),
    ] {
        assert_eq!(allows(&night, &day(hms)), inside, "night at {hms}");
    }
    let after = criterion(r#"time_of_day = { after = "12:00:30" }"#);
    assert!(!allows(&after, &day("12:00:29")));
    assert!(allows(&after, &day("12:00:30")));
    let before = criterion(r#"time_of_day = { before = 12:00:00 }"#);
    assert!(allows(&before, &day("11:59:59")));
    assert!(!allows(&before, &day("12:00:00")));
    let until_midnight = criterion(r#"time_of_day = { after = "18:00", before = "24:00" }"#);
    assert!(allows(&until_midnight, &day("23:59:59")));
    assert!(!allows(&until_midnight, &day("00:00:00")));
    // Before the epoch.
    assert!(allows(
        &criterion(r#"time_of_day = { after = "23:00" }"#),
        &at(-1)
    ));
}

#[test]
fn time_of_day_in_a_time_zone_across_dst() {
    let office = criterion(
        r#"time_of_day = { after = "09:00", before = "17:00", timezone = "Europe/Amsterdam" }"#,
    );
    // Winter: UTC+1.
    assert!(!allows(&office, &at(ts("2024-03-30T07:30:00Z"))));
    assert!(allows(&office, &at(ts("2024-03-30T08:00:00Z"))));
    // Summer time starts 2024-03-31 01:00 UTC: UTC+2.
    assert!(allows(&office, &at(ts("2024-03-31T07:30:00Z"))));
    assert!(!allows(&office, &at(ts("2024-03-31T15:00:00Z"))));
    assert!(allows(&office, &at(ts("2024-03-31T14:59:59Z"))));
    // Crossing midnight in a zone west of UTC.
    let night_ny = criterion(
        r#"time_of_day = { after = "22:00", before = "02:00", timezone = "America/New_York" }"#,
    );
    assert!(
        allows(&night_ny, &at(ts("2024-01-01T04:00:00Z"))),
        "23:00 in New York"
    );
    assert!(
        !allows(&night_ny, &at(ts("2024-01-01T12:00:00Z"))),
        "07:00 in New York"
    );
    // Half-hour zone.
    let kolkata = criterion(
        r#"time_of_day = { after = "17:30", before = "17:31", timezone = "Asia/Kolkata" }"#,
    );
    assert!(allows(&kolkata, &at(MONDAY_NOON)));
}

#[test]
fn time_of_day_errors() {
    for (value, message) in [
        (
            r#"{ after = "9:00" }"#,
            r#".after: bad time "9:00": expected "HH:MM" or "HH:MM:SS" (24-hour)"#,
        ),
        (
            r#"{ after = "12:60" }"#,
            r#".after: bad time "12:60": expected "HH:MM" or "HH:MM:SS" (24-hour)"#,
        ),
        (
            r#"{ after = "24:00" }"#,
            r#".after: bad time "24:00": expected "HH:MM" or "HH:MM:SS" (24-hour)"#,
        ),
        (
            r#"{ before = "24:01" }"#,
            r#".before: bad time "24:01": expected "HH:MM" or "HH:MM:SS" (24-hour)"#,
        ),
        (
            r#"{ after = "10:00", before = "10:00" }"#,
            ": after and before are equal: the range would be empty",
        ),
        (r#"{ timezone = "UTC" }"#, ": expected after and/or before"),
        (
            r#"{ after = "10:00", timezone = "Mars/Olympus" }"#,
            r#".timezone: unknown time zone "Mars/Olympus""#,
        ),
        (
            r#"{ after = "10:00", tz = "UTC" }"#,
            r#": unknown key "tz""#,
        ),
        (
            r#""09:00-17:00""#,
            r#": expected a table with after and/or before ("HH:MM") and an optional timezone, found string"#,
        ),
    ] {
        assert_eq!(
            error(&format!(
                "{{ allow = {{ or = [ {{ time_of_day = {value} }} ] }} }}"
            )),
            format!("routes[0].policy.allow.or[0].time_of_day{message}"),
            "{value}"
        );
    }
}

#[test]
fn time_parsers() {
    assert_eq!(time::parse_time_of_day("00:00", false), Some(0));
    assert_eq!(time::parse_time_of_day("23:59:59", false), Some(86_399));
    assert_eq!(time::parse_time_of_day("24:00:00", true), Some(86_400));
    assert_eq!(time::parse_time_of_day("24:00", false), None);
    assert_eq!(time::parse_time_of_day("12:00:00:00", false), None);
    assert_eq!(time::parse_time_of_day("1a:00", false), None);
    assert_eq!(time::parse_time_of_day("", false), None);
    assert_eq!(time::parse_days("mon-sun"), Ok(0b111_1111));
    assert_eq!(time::parse_days("sun-mon"), Ok(0b100_0001));
    assert_eq!(time::parse_days("thurs"), Ok(0b000_1000));
}

// === client certificate ===

const FP: &str = "3f1a6e0c5b2d4e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5";

fn cert() -> ClientCertificate {
    ClientCertificate {
        fingerprint_sha256: FP.into(),
        san_dns: vec!["host.Example.com".into(), "alt.example.com".into()],
        san_email: vec!["Ops@Example.com".into()],
        san_uri: vec!["spiffe://example.com/ns/prod/sa/web".into()],
    }
}

#[test]
fn client_certificate_criteria() {
    let c = cert();
    let with_cert = Request {
        client_certificate: Some(&c),
        ..get()
    };
    let yes = |crit: &str| allows(&criterion(crit), &with_cert);
    let upper_colons: String = FP
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    assert!(yes(&format!(
        r#"client_certificate = {{ fingerprint = "{FP}" }}"#
    )));
    assert!(yes(&format!(
        r#"client_certificate = {{ fingerprint = "{upper_colons}" }}"#
    )));
    assert!(yes(&format!(
        r#"client_certificate = {{ fingerprint = ["{}", "{FP}"] }}"#,
        "0".repeat(64)
    )));
    assert!(!yes(&format!(
        r#"client_certificate = {{ fingerprint = "{}" }}"#,
        "0".repeat(64)
    )));
    assert!(yes(
        r#"client_certificate = { san_dns = "HOST.example.com" }"#
    ));
    assert!(yes(
        r#"client_certificate = { san_dns = { ends_with = ".example.com" } }"#
    ));
    assert!(
        !yes(r#"client_certificate = { san_dns = { not = "alt.example.com" } }"#),
        "negatives hold for every SAN"
    );
    assert!(yes(
        r#"client_certificate = { san_email = "ops@example.com" }"#
    ));
    assert!(yes(
        r#"client_certificate = { san_uri = { starts_with = "spiffe://example.com/ns/prod/" } }"#
    ));
    assert!(
        !yes(r#"client_certificate = { san_uri = { starts_with = "SPIFFE://" } }"#),
        "URIs are case-sensitive"
    );
    assert!(yes(&format!(
        r#"client_certificate = {{ fingerprint = "{FP}", san_dns = "alt.example.com" }}"#
    )));
    assert!(!yes(&format!(
        r#"client_certificate = {{ fingerprint = "{FP}", san_dns = "other.example.com" }}"#
    )));
    // A given fingerprint is compared ignoring case and colons too.
    let mut shouting = cert();
    shouting.fingerprint_sha256 = upper_colons.clone();
    let req = Request {
        client_certificate: Some(&shouting),
        ..get()
    };
    assert!(allows(
        &criterion(&format!(
            r#"client_certificate = {{ fingerprint = "{FP}" }}"#
        )),
        &req
    ));
    // Without a certificate nothing matches, not even negations.
    assert!(!allows(
        &criterion(r#"client_certificate = { san_dns = { not = "x" } }"#),
        &get()
    ));
}

#[test]
fn client_certificate_errors() {
    assert_eq!(
        error(r#"{ allow = { or = [ { client_certificate = { fingerprint = "abc" } } ] } }"#),
        r#"routes[0].policy.allow.or[0].client_certificate.fingerprint: bad SHA-256 fingerprint "abc": expected 64 hex digits (colons allowed)"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { client_certificate = { san_dsn = "x" } } ] } }"#),
        r#"routes[0].policy.allow.or[0].client_certificate: unknown key "san_dsn" (did you mean "san_dns"?)"#
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { client_certificate = {} } ] } }"#),
        "routes[0].policy.allow.or[0].client_certificate: expected one or more of fingerprint, san_dns, san_email, san_uri"
    );
    assert_eq!(
        error(r#"{ allow = { or = [ { client_certificate = { san_uri = { has = "x" } } } ] } }"#),
        r#"routes[0].policy.allow.or[0].client_certificate.san_uri: "has" is not allowed here: it is a list matcher; this criterion takes string matchers: is, not, contains, starts_with, ends_with, in, not_in"#
    );
}
