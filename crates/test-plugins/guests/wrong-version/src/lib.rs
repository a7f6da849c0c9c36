//! A readiness policy built against a future 0.9.0 of the contract.
wit_bindgen::generate!({
    inline: "
        package ray-orchestrator:policy@0.9.0;
        interface types {
            record key-value { key: string, value: string }
            variant readiness { ready, wait(string), fail(string) }
        }
        interface readiness-policy {
            use types.{key-value, readiness};
            check: func(params: list<key-value>) -> readiness;
        }
        world readiness {
            export readiness-policy;
        }
    ",
});

struct Future;

impl exports::ray_orchestrator::policy::readiness_policy::Guest for Future {
    fn check(
        _params: Vec<ray_orchestrator::policy::types::KeyValue>,
    ) -> ray_orchestrator::policy::types::Readiness {
        ray_orchestrator::policy::types::Readiness::Ready
    }
}

export!(Future);
