//! What the platform the cluster runs on says about it. Today: Kubernetes
//! ([`kubernetes`]): the RayCluster's expected topology and pod diagnosis
//! as [`orchestrator_domain::ExternalFacts`] for the wait phase, and the
//! lifecycle's events as Kubernetes Events.

pub(crate) mod kubernetes;
