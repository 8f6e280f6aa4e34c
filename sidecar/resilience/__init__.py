"""Resilience for calls between services: timeouts with deadline propagation, retries with a budget, resource
caps, outlier ejection and load balancing; one small pure core per concern, composed in :mod:`.policy`.

Keep apart the three things called "circuit breaking" (Envoy's vocabulary): resource caps (:mod:`.breaker`),
outlier ejection (:mod:`.outlier`), and the router's own timeouts and retries (:mod:`.deadline`,
:mod:`.backoff`, :mod:`.budget`, :class:`.retry.Call`). :mod:`.balancer` picks among the hosts left.
"""

from sidecar.resilience.cluster import Cluster
from sidecar.resilience.policy import Resilience
from sidecar.resilience.retry import Call, Peers
from sidecar.resilience.rules import RetryOn, RetryRules

__all__ = ["Call", "Cluster", "Peers", "Resilience", "RetryOn", "RetryRules"]
