//! Synthetic opa-envoy-plugin decision logs (~600 B), written from the upstream field list, for
//! the benches: every record distinct (ids, addresses, times), one in seven a deny.

pub fn opa_event(i: usize) -> String {
    let allow = !i.is_multiple_of(7);
    format!(
        concat!(
            r#"{{"decision_id":"{:08x}-55e4-417a-b1d8-4aceb67960d1","path":"envoy/authz/allow","result":{},"#,
            r#""timestamp":"2026-11-22T10:{:02}:{:02}.{:09}Z","#,
            r#""input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"10.4.{}.{}","portValue":{}}}}},"#,
            r#""principal":"spiffe://cluster.local/ns/web/sa/frontend-{}"}},"destination":{{"address":{{"socketAddress":"#,
            r#"{{"address":"10.8.0.{}","portValue":8080}}}},"principal":"spiffe://cluster.local/ns/shop/sa/orders"}},"#,
            r#""request":{{"http":{{"id":"{}","method":"GET","path":"/api/orders/{}","host":"orders.shop:8080","#,
            r#""headers":{{"x-request-id":"{:08x}-6af4-4986"}}}}}}}}}}}}"#
        ),
        i,
        allow,
        (i / 60) % 60,
        i % 60,
        i % 1_000_000_000,
        (i / 256) % 256,
        i % 256,
        30000 + i % 30000,
        i % 50,
        i % 200,
        i,
        i % 10_000,
        i
    )
}
