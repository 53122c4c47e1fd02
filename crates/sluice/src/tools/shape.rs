//! Request logs shaped like real ones, for `sluice load --shape realistic` and the demo: what an
//! API gateway or an HTTP server's access log records, 1–3 KB each. Compression and the bill
//! are measured on these (bench/README.md); the padded shape stays for size-driven tests.
//!
//! Real logs repeat a lot (field names, routes, user agents, header names) and carry a share of
//! bytes nothing predicts: UUID request ids, trace ids, client IPs, ids in paths and cookies,
//! timings. Both are here, in proportions taken from access logs of a typical JSON API.

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

/// Common real user agents, the most frequent first (browsers, mobile, SDKs, bots).
const USER_AGENTS: [&str; 14] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "okhttp/4.12.0",
    "python-requests/2.32.3",
    "Go-http-client/2.0",
    "curl/8.5.0",
    "aws-sdk-js/3.700.0 ua/2.1 os/linux#6.1 lang/js md/nodejs#20.18.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
];

const REFERERS: [&str; 6] = [
    "https://www.example-shop.com/",
    "https://www.example-shop.com/cart",
    "https://www.google.com/",
    "https://www.example-shop.com/account/orders",
    "https://m.example-shop.com/products",
    "android-app://com.example.shop/",
];

const LANGUAGES: [&str; 6] = [
    "en-US,en;q=0.9",
    "de-DE,de;q=0.9,en;q=0.8",
    "fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7",
    "en-GB,en;q=0.9",
    "es-ES,es;q=0.9",
    "ja-JP,ja;q=0.9,en;q=0.6",
];

const WORDS: [&str; 12] = [
    "shoes",
    "red",
    "jacket",
    "wireless",
    "headphones",
    "kids",
    "winter",
    "sale",
    "laptop",
    "bag",
    "running",
    "coffee",
];

const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-southeast-2"];

/// Where clients are: country, city, autonomous system and its owner.
const GEO: [(&str, &str, u32, &str); 6] = [
    ("US", "Ashburn", 14618, "Amazon.com, Inc."),
    ("DE", "Frankfurt am Main", 3320, "Deutsche Telekom AG"),
    ("GB", "London", 2856, "British Telecommunications PLC"),
    ("FR", "Paris", 3215, "Orange S.A."),
    ("JP", "Tokyo", 2516, "KDDI Corporation"),
    ("BR", "Sao Paulo", 28573, "Claro NXT Telecomunicacoes Ltda"),
];

/// One route: its template and how a concrete path is made from it.
struct Route {
    method: &'static str,
    template: &'static str,
    weight: u32,
}

const ROUTES: [Route; 10] = [
    Route {
        method: "GET",
        template: "/api/v2/products/:id",
        weight: 24,
    },
    Route {
        method: "GET",
        template: "/api/v2/search",
        weight: 16,
    },
    Route {
        method: "GET",
        template: "/api/v2/users/:id/orders",
        weight: 12,
    },
    Route {
        method: "POST",
        template: "/api/v2/carts/:id/items",
        weight: 10,
    },
    Route {
        method: "GET",
        template: "/api/v2/carts/:id",
        weight: 10,
    },
    Route {
        method: "POST",
        template: "/api/v2/sessions",
        weight: 6,
    },
    Route {
        method: "PUT",
        template: "/api/v2/users/:id/preferences",
        weight: 4,
    },
    Route {
        method: "DELETE",
        template: "/api/v2/carts/:id/items/:item",
        weight: 3,
    },
    Route {
        method: "POST",
        template: "/api/v2/checkout",
        weight: 5,
    },
    Route {
        method: "GET",
        template: "/healthz",
        weight: 10,
    },
];

/// Status codes and their weights (per thousand).
const STATUSES: [(u16, u32); 10] = [
    (200, 820),
    (201, 40),
    (204, 30),
    (304, 25),
    (400, 25),
    (401, 15),
    (404, 30),
    (429, 5),
    (500, 7),
    (503, 3),
];

fn weighted<T: Copy>(rng: &mut StdRng, items: &[(T, u32)]) -> T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut pick = rng.random_range(0..total);
    for (item, w) in items {
        if pick < *w {
            return *item;
        }
        pick -= w;
    }
    items[items.len() - 1].0
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A lognormal draw with this median and sigma.
fn lognormal(rng: &mut StdRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

fn hex(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

fn base62(rng: &mut StdRng, n: usize) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..n)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect()
}

/// A version-4 UUID from the generator (so a seed repeats a run).
pub fn uuid(rng: &mut StdRng) -> String {
    let h = hex(rng, 32);
    let variant = ['8', '9', 'a', 'b'][rng.random_range(0..4)];
    format!(
        "{}-{}-4{}-{variant}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn ip(rng: &mut StdRng) -> String {
    if rng.random_bool(0.1) {
        return format!(
            "2a02:{:x}:{:x}::{:x}",
            rng.random_range(0..0xffff),
            rng.random_range(0..0xffff),
            rng.random_range(1..0xffff)
        );
    }
    format!(
        "{}.{}.{}.{}",
        rng.random_range(1..224),
        rng.random_range(0..256),
        rng.random_range(0..256),
        rng.random_range(1..255)
    )
}

fn concrete_path(rng: &mut StdRng, template: &str) -> String {
    let mut path = String::new();
    for part in template.split('/').skip(1) {
        path.push('/');
        match part {
            ":id" => path.push_str(&rng.random_range(1_000..9_999_999u32).to_string()),
            ":item" => path.push_str(&format!("sku-{}", base62(rng, 8))),
            other => path.push_str(other),
        }
    }
    match template {
        "/api/v2/search" => {
            let q: Vec<&str> = (0..rng.random_range(1..4))
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            path.push_str(&format!(
                "?q={}&page={}&limit=24&sort=relevance",
                q.join("+"),
                rng.random_range(1..6)
            ));
        }
        "/api/v2/users/:id/orders" => path.push_str(&format!(
            "?page={}&limit=20&status=all",
            rng.random_range(1..4)
        )),
        _ => {}
    }
    path
}

/// One request log with this request id, timestamped `ts_ms` (epoch milliseconds).
pub fn realistic_log(rng: &mut StdRng, request_id: &str, ts_ms: u64) -> Value {
    let routes: Vec<(usize, u32)> = ROUTES
        .iter()
        .enumerate()
        .map(|(i, r)| (i, r.weight))
        .collect();
    let route = &ROUTES[weighted(rng, &routes)];
    let status = weighted(rng, &STATUSES);
    let client_ip = ip(rng);
    let ua = USER_AGENTS[(lognormal(rng, 1.5, 1.0) as usize).min(USER_AGENTS.len() - 1)];
    let latency = (lognormal(rng, 38.0, 0.9) * 100.0).round() / 100.0 + 0.01;
    let upstream = (latency * rng.random_range(0.5..0.95) * 100.0).round() / 100.0 + 0.01;
    let ts = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts_ms),
    )
    .to_string();
    let region = REGIONS[rng.random_range(0..REGIONS.len())];
    let mut headers = json!({
        "accept": if route.template == "/healthz" { "*/*" } else { "application/json, text/plain, */*" },
        "accept-encoding": "gzip, deflate, br",
        "accept-language": LANGUAGES[rng.random_range(0..LANGUAGES.len())],
        "x-forwarded-for": format!("{client_ip}, 10.{}.{}.{}", rng.random_range(0..256), rng.random_range(0..256), rng.random_range(1..255)),
        "x-forwarded-proto": "https",
        "x-amzn-trace-id": format!("Root=1-{}-{}", hex(rng, 8), hex(rng, 24)),
        "cookie": format!("session_id={}; _ga=GA1.2.{}.{}; consent=analytics%3Dtrue%26ads%3Dfalse", base62(rng, 32), rng.random_range(100_000_000..999_999_999u32), ts_ms / 1000),
    });
    if route.method != "GET" && route.method != "DELETE" {
        headers["content-type"] = json!("application/json; charset=utf-8");
        headers["content-length"] = json!(rng.random_range(40..4000));
        headers["origin"] = json!("https://www.example-shop.com");
    }
    if ua.starts_with("Mozilla/5.0 (") && !ua.contains("Googlebot") {
        // What Chromium-family browsers send besides the user agent.
        headers["sec-ch-ua"] =
            json!("\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"");
        headers["sec-ch-ua-mobile"] = json!(if ua.contains("Mobile") { "?1" } else { "?0" });
        headers["sec-ch-ua-platform"] = json!(if ua.contains("Windows") {
            "\"Windows\""
        } else if ua.contains("Android") {
            "\"Android\""
        } else {
            "\"macOS\""
        });
        headers["sec-fetch-dest"] = json!("empty");
        headers["sec-fetch-mode"] = json!("cors");
        headers["sec-fetch-site"] = json!("same-site");
    }
    let (country, city, asn, org) = GEO[rng.random_range(0..GEO.len())];
    let ttfb = (latency * rng.random_range(0.6..0.98) * 100.0).round() / 100.0;
    let mut log = json!({
        "request_id": request_id,
        "ts": ts,
        "method": route.method,
        "path": concrete_path(rng, route.template),
        "route": route.template,
        "status": status,
        "latency_ms": latency,
        "upstream_latency_ms": upstream,
        "request_bytes": if route.method == "GET" { 0 } else { rng.random_range(40..4000) },
        "response_bytes": lognormal(rng, 1800.0, 1.2) as u64,
        "client_ip": client_ip,
        "user_agent": ua,
        "user_id": if rng.random_bool(0.3) { Value::Null } else { json!(format!("usr_{}", base62(rng, 14))) },
        "trace_id": hex(rng, 32),
        "span_id": hex(rng, 16),
        "service": "storefront-api",
        "version": "2026.11.3",
        "env": "production",
        "region": region,
        "host": format!("storefront-api-7f9c6d{}-{}", base62(rng, 3).to_lowercase(), base62(rng, 5).to_lowercase()),
        "protocol": if rng.random_bool(0.7) { "HTTP/2.0" } else { "HTTP/1.1" },
        "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "sni": "api.example-shop.com"},
        "geo": {"country": country, "city": city, "asn": asn, "org": org},
        "timings": {
            "dns_ms": (rng.random_range(0.0..4.0f64) * 100.0).round() / 100.0,
            "connect_ms": (rng.random_range(0.2..30.0f64) * 100.0).round() / 100.0,
            "ttfb_ms": ttfb,
        },
        "headers": headers,
        "response_headers": {
            "content-type": "application/json; charset=utf-8",
            "cache-control": if route.method == "GET" { "private, max-age=60" } else { "no-store" },
            "etag": format!("W/\"{}\"", hex(rng, 16)),
            "x-ratelimit-limit": "600",
            "x-ratelimit-remaining": rng.random_range(0..600).to_string(),
            "server-timing": format!("app;dur={upstream}, db;dur={:.2}, cache;desc=\"{}\"", upstream * rng.random_range(0.1..0.6), if rng.random_bool(0.7) { "hit" } else { "miss" }),
        },
    });
    if rng.random_bool(0.6) {
        log["referer"] = json!(REFERERS[rng.random_range(0..REFERERS.len())]);
    }
    if status >= 400 {
        log["error"] = error_of(rng, status, route.template);
    }
    log
}

fn error_of(rng: &mut StdRng, status: u16, route: &str) -> Value {
    let (code, message) = match status {
        400 => (
            "VALIDATION_FAILED",
            "request body failed validation: field `quantity` must be between 1 and 99",
        ),
        401 => (
            "UNAUTHENTICATED",
            "session expired or invalid; sign in again",
        ),
        404 => ("NOT_FOUND", "no resource matches the given id"),
        429 => (
            "RATE_LIMITED",
            "too many requests for this client; retry after the interval in Retry-After",
        ),
        503 => (
            "UPSTREAM_UNAVAILABLE",
            "inventory service did not answer within 2000 ms",
        ),
        _ => ("INTERNAL", "unexpected error while handling the request"),
    };
    let mut e = json!({"code": code, "message": message, "route": route});
    if status >= 500 {
        e["stack"] = json!(format!(
            "Error: {message}\n    at InventoryClient.reserve (/app/dist/clients/inventory.js:{}:17)\n    at async CheckoutService.place (/app/dist/services/checkout.js:{}:9)\n    at async Router.handle (/app/node_modules/express/lib/router/index.js:284:7)",
            rng.random_range(40..400),
            rng.random_range(40..400)
        ));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The realistic shape is what it says: 1–3 KB logs the default schema takes, UUID keys, a
    /// status mix dominated by 200 with some errors, a long latency tail, many user agents.
    #[test]
    fn realistic_logs_look_like_an_api_servers_access_log() {
        let mut rng = StdRng::seed_from_u64(1);
        let schema = sluice_core::Schema::default();
        let (mut sizes, mut statuses, mut agents, mut latencies) = (
            Vec::new(),
            std::collections::BTreeMap::new(),
            std::collections::BTreeSet::new(),
            Vec::new(),
        );
        for i in 0..2000 {
            let id = uuid(&mut rng);
            assert_eq!(id.len(), 36);
            assert_eq!(&id[14..15], "4");
            let log = realistic_log(&mut rng, &id, 1_764_000_000_000 + i);
            let text = log.to_string();
            sluice_core::decode_message(text.as_bytes(), &schema).expect("the schema takes it");
            sizes.push(text.len());
            *statuses.entry(log["status"].as_u64().unwrap()).or_insert(0) += 1;
            agents.insert(log["user_agent"].as_str().unwrap().to_string());
            latencies.push(log["latency_ms"].as_f64().unwrap());
        }
        sizes.sort_unstable();
        latencies.sort_by(f64::total_cmp);
        let (p5, p50, p95) = (sizes[100], sizes[1000], sizes[1900]);
        assert!(
            p5 >= 1000 && p95 <= 3000,
            "sizes p5 {p5}, p50 {p50}, p95 {p95}"
        );
        assert!(statuses[&200] > 1400 && statuses.keys().any(|s| *s >= 500));
        assert!(agents.len() >= 8, "{agents:?}");
        assert!(latencies[1900] > 3.0 * latencies[1000], "a long tail");
    }
}
