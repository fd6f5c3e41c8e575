//! Node conditions: Ready and the three pressure conditions, computed from real measurements
//! against the configured thresholds (the kubelet's `nodestatus/setters.go` reasons and texts).

use k8s_openapi::api::core::v1::NodeCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::config::{Signal, Threshold};
use crate::node::host::{Filesystem, Memory, Pids};

/// One round of measurements.
#[derive(Debug, Clone, Copy)]
pub struct Measurements {
    /// Host memory.
    pub memory: Memory,
    /// The data dir's filesystem.
    pub nodefs: Filesystem,
    /// Process IDs.
    pub pids: Pids,
}

/// Which pressures are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// memory.available below its threshold.
    pub memory: bool,
    /// nodefs.available below its threshold.
    pub disk: bool,
    /// pid.available below its threshold.
    pub pid: bool,
}

impl Pressure {
    /// Compares measurements with thresholds; a signal without a threshold never raises pressure.
    pub fn evaluate(thresholds: &[Threshold], m: &Measurements) -> Self {
        let mut pressure = Self::default();
        for t in thresholds.iter().filter(|t| is_met(t, m)) {
            pressure.raise(t.signal);
        }
        pressure
    }

    /// Raises the condition of `signal`.
    pub fn raise(&mut self, signal: Signal) {
        match signal {
            Signal::MemoryAvailable => self.memory = true,
            Signal::NodefsAvailable => self.disk = true,
            Signal::PidAvailable => self.pid = true,
        }
    }
}

/// Whether the signal's available amount is below the threshold now.
pub fn is_met(t: &Threshold, m: &Measurements) -> bool {
    match t.signal {
        Signal::MemoryAvailable => m.memory.available_bytes < t.quantity.of(m.memory.total_bytes),
        Signal::NodefsAvailable => m.nodefs.available_bytes < t.quantity.of(m.nodefs.total_bytes),
        Signal::PidAvailable => {
            m.pids.max.saturating_sub(m.pids.in_use) < t.quantity.of(m.pids.max)
        }
    }
}

/// The pressure conditions the eviction manager decided last (thresholds met, held for the
/// pressure transition period), shared with node status and admission; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SharedPressure(std::sync::Arc<std::sync::Mutex<Pressure>>);

impl SharedPressure {
    /// The conditions decided last.
    pub fn get(&self) -> Pressure {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records new conditions.
    pub fn set(&self, pressure: Pressure) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = pressure;
    }
}

/// Whether the node can take pods, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Ready.
    Ready,
    /// Ready, with something users should know in the Ready message (pods share the node's
    /// network for want of a CNI configuration).
    ReadyWithNote(String),
    /// Not ready, with the message users see in `kubectl describe node`.
    NotReady(String),
}

/// Builds the four conditions, keeping each one's `lastTransitionTime` from `previous` while its
/// status is unchanged.
pub fn conditions(
    readiness: &Readiness,
    pressure: Pressure,
    previous: &[NodeCondition],
    now: Time,
) -> Vec<NodeCondition> {
    let (ready, ready_reason, ready_message) = match readiness {
        Readiness::Ready => (
            "True",
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        ),
        Readiness::ReadyWithNote(note) => (
            "True",
            "KubeletReady",
            format!("kubelet is posting ready status; {note}"),
        ),
        Readiness::NotReady(message) => ("False", "KubeletNotReady", message.clone()),
    };
    let pressure_condition = |kind: &str, on: bool, yes: (&str, &str), no: (&str, &str)| {
        let (reason, message) = if on { yes } else { no };
        (
            kind.to_string(),
            if on { "True" } else { "False" },
            reason.to_string(),
            message.to_string(),
        )
    };
    let wanted = [
        pressure_condition(
            "MemoryPressure",
            pressure.memory,
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
        ),
        pressure_condition(
            "DiskPressure",
            pressure.disk,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        pressure_condition(
            "PIDPressure",
            pressure.pid,
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        ),
        (
            "Ready".to_string(),
            ready,
            ready_reason.to_string(),
            ready_message,
        ),
    ];
    wanted
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let transition = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            NodeCondition {
                type_,
                status: status.to_string(),
                reason: Some(reason),
                message: Some(message),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(transition),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurements(mem_avail: u64, disk_avail: u64, pids_in_use: u64) -> Measurements {
        Measurements {
            memory: Memory {
                total_bytes: 1 << 30,
                available_bytes: mem_avail,
            },
            nodefs: Filesystem {
                total_bytes: 1000,
                available_bytes: disk_avail,
            },
            pids: Pids {
                max: 1000,
                in_use: pids_in_use,
            },
        }
    }

    #[test]
    fn pressure_follows_thresholds() {
        let t = Threshold::defaults();
        assert_eq!(
            Pressure::evaluate(&t, &measurements(1 << 29, 500, 10)),
            Pressure::default()
        );
        let p = Pressure::evaluate(&t, &measurements(50 << 20, 50, 990));
        assert_eq!(
            p,
            Pressure {
                memory: true,
                disk: true,
                pid: true
            }
        );
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let t0 = Time(jiff::Timestamp::from_second(1000).expect("time"));
        let t1 = Time(jiff::Timestamp::from_second(2000).expect("time"));
        let first = conditions(&Readiness::Ready, Pressure::default(), &[], t0.clone());
        let second = conditions(&Readiness::Ready, Pressure::default(), &first, t1.clone());
        let ready = second.iter().find(|c| c.type_ == "Ready").expect("ready");
        assert_eq!(ready.last_transition_time, Some(t0));
        assert_eq!(ready.last_heartbeat_time, Some(t1.clone()));
        let down = conditions(
            &Readiness::NotReady("shutting down".into()),
            Pressure::default(),
            &second,
            t1.clone(),
        );
        let ready = down.iter().find(|c| c.type_ == "Ready").expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.clone()),
            ("False", Some(t1))
        );
    }
}
