//! The simulated mesh: services with SPIFFE identities and addresses, and who calls whom.

use rand::Rng;
use rand::rngs::StdRng;

/// One service of the mesh.
#[derive(Clone, Debug)]
pub(super) struct Service {
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) ip: String,
}

impl Service {
    pub(super) fn spiffe(&self) -> String {
        format!("spiffe://cluster.local/ns/{}/sa/{}", self.ns, self.name)
    }

    /// Its cluster DNS name (what callers put in the HTTP host).
    pub(super) fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.ns)
    }
}

pub(super) const NAMES: [(&str, &str); 16] = [
    ("web", "frontend"),
    ("shop", "checkout"),
    ("shop", "cart"),
    ("shop", "catalog"),
    ("shop", "inventory"),
    ("pay", "payments"),
    ("pay", "ledger"),
    ("auth", "auth"),
    ("auth", "users"),
    ("ship", "shipping"),
    ("ship", "tracking"),
    ("notify", "notifications"),
    ("notify", "email"),
    ("search", "search"),
    ("search", "recommendations"),
    ("ops", "reports"),
];

/// The mesh: services and who calls whom.
#[derive(Clone, Debug)]
pub struct Mesh {
    pub(super) services: Vec<Service>,
    /// (caller, callee) indexes into `services`.
    pub(super) edges: Vec<(usize, usize)>,
}

impl Mesh {
    /// `n` services (4..=16 named, more numbered), each calling 2–3 others.
    pub fn new(n: usize, rng: &mut StdRng) -> Mesh {
        let n = n.max(4);
        let services: Vec<Service> = (0..n)
            .map(|i| {
                let (ns, name) = NAMES
                    .get(i)
                    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                    .unwrap_or_else(|| ("apps".to_owned(), format!("svc{i}")));
                Service {
                    ns,
                    name,
                    ip: format!("10.{}.{}.{}", 1 + i / 250, i % 250, 10 + i % 7),
                }
            })
            .collect();
        let mut edges = Vec::new();
        for caller in 0..n {
            let k = rng.random_range(2..=3);
            while edges.iter().filter(|(c, _)| *c == caller).count() < k {
                let callee = rng.random_range(0..n);
                if callee != caller && !edges.contains(&(caller, callee)) {
                    edges.push((caller, callee));
                }
            }
        }
        Mesh { services, edges }
    }

    /// A service that does not call `callee`... and a callee it never called.
    pub(super) fn new_edge(&self, rng: &mut StdRng) -> (usize, usize) {
        let n = self.services.len();
        loop {
            let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
            if a != b && !self.edges.contains(&(a, b)) {
                return (a, b);
            }
        }
    }
}
