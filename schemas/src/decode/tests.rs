use super::*;

#[test]
fn times_parse_in_the_forms_exporters_write() {
    assert_eq!(parse_time_ns("1970-01-01T00:00:01Z"), Some(1_000_000_000));
    assert_eq!(
        parse_time_ns("1970-01-01T00:00:01.000000001Z"),
        Some(1_000_000_001)
    );
    assert_eq!(
        parse_time_ns("1970-01-01T01:00:01+01:00"),
        Some(1_000_000_000)
    );
    assert_eq!(
        parse_time_ns("2022-11-29 00:09:04.38"),
        parse_time_ns("2022-11-29T00:09:04.38Z")
    );
    assert_eq!(parse_time_ns("yesterday"), None);
    assert_eq!(parse_time_ns("2018-13-45T00:00:00Z"), None);
    // Beyond what i64 nanoseconds can hold (year 2262).
    assert_eq!(parse_time_ns("9999-01-01T00:00:00Z"), None);
}

#[test]
fn addresses_split_into_ip_and_port() {
    let c = |s: &'static str| split_addr(&Cow::Borrowed(s));
    assert_eq!(c("10.0.0.1:8080"), (Some("10.0.0.1".into()), Some(8080)));
    assert_eq!(c("[::1]:443"), (Some("::1".into()), Some(443)));
    assert_eq!(c("fe80::1"), (Some("fe80::1".into()), None));
    assert_eq!(c("unix:///var/run/x.sock"), (None, None));
    assert_eq!(c("10.0.0.1:99999"), (None, None));
}

#[test]
fn namespaces_come_from_spiffe_ids_and_service_accounts() {
    let n = |s: &'static str| namespace_of(&Cow::Borrowed(s)).map(|c| c.into_owned());
    assert_eq!(
        n("spiffe://cluster.local/ns/shop/sa/cart").as_deref(),
        Some("shop")
    );
    assert_eq!(n("spiffe://td/region/eu/ns/a/sa/b").as_deref(), Some("a"));
    assert_eq!(
        n("system:serviceaccount:kube-system:default").as_deref(),
        Some("kube-system")
    );
    assert_eq!(n("alice@example.com"), None);
    assert_eq!(n("spiffe://td/workload"), None);
}
