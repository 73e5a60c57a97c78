"""The sidecar's HTTP layer, one concept a module: `app` mounts what `wiring` built;
`probes` and `feedback` are the routes; `middleware`, `bodies` (the body budget),
`connections` (bounds on what a peer may hold), `faults` (client faults counted and
logged), `relay_view` (the render cache of `GET /feedback`) and `peers` (the fair-share
rule) keep every client bounded."""
