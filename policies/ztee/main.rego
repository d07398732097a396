# ztee default policy: risk routing for sandbox, LLM and tool actions.
#
# The gateway evaluates data.ztee.main.decision for every action. The result is an object
#   {"verdict": "allow" | "deny" | "require_approval", "risk": "LOW" | "MEDIUM" | "HIGH",
#    "reasons": [{"rule": "<stable id>", "message": "<text>"}]}
# Deny by default: a request is allowed only when its action is in `known_actions` below (and no
# deny or approval rule fires). Any other action, e.g. one a new front door invents, is denied
# with `policy.no_allow_rule`. Actions: sandbox.create, sandbox.exec, sandbox.input, sandbox.delete, run,
# file.write (upload), file.read (download), file.stat, file.list, file.watch, file.mkdir,
# file.move, file.remove, llm.chat, tool.call, egress, secret.use, image.admit.
# Routing, strongest first:
#   deny      - never allowed: no allow rule for the action, SAD present, raw PAN to an external model,
#               a tool that sends data out after a tool result with an injection, a secret or
#               the card data it carries (flow rules over input.trace), a provider the tenant's
#               tier may not use, images/audio/files to an external model (DLP cannot read
#               them; unless the tier is in unscanned_content_tiers), egress outside the
#               allowlist, an unpinned image, a near-certain prompt injection.
#   HIGH      - needs a human approver: code with raw card data, a tool that sends data out after
#               reading an untrusted source, egress (unless the operator
#               pre-approved the destination), a secret whose grant asks for approval,
#               destructive tools, a suspected prompt injection.
#   MEDIUM    - runs and is logged: code execution, file transfers, granted secrets, pre-approved egress,
#               tools not known to be read-only, content with (masked) DLP findings, a
#               cardholder name or address together with a raw PAN, images, audio or files to
#               a local model.
# Secrets: a secret reaches a sandbox only when a grant in data.ztee.config.secret_grants
# matches the caller, the secret's name and the sandbox's image (deny by default).
#   LOW       - runs: read-only tools, plain chat, sandbox creation.
# Messages never quote request content: they are recorded in the audit trail.
# Lists and thresholds live in data.json (data.ztee.config) so operators can tune them without
# editing Rego.
package ztee.main

import rego.v1

cfg := data.ztee.config

# sandbox.input: text written to a running process's stdin, which a shell or an interpreter may
# run as code.
code_actions := {"run", "sandbox.exec", "sandbox.create", "sandbox.input"}

# Copying a file into or out of a sandbox: content crosses the boundary as it does with a command,
# so the same card-data and secret checks apply.
file_actions := {"file.write", "file.read"}

# Looking at or rearranging files inside a sandbox (E2B's filesystem calls): nothing crosses the
# sandbox boundary but names, so they are low risk unless a name carries card data.
fs_read_actions := {"file.stat", "file.list", "file.watch"}

fs_change_actions := {"file.mkdir", "file.move", "file.remove"}

fs_actions := fs_read_actions | fs_change_actions

secret_actions := (code_actions | file_actions) | {"secret.use"}

requested_secrets := object.get(input.request, "secrets", [])

# ----------------------------------------------------------------------------------------------
# Allow: the actions this bundle knows. What may not run within an allowed action (card data,
# providers, egress, secrets, unpinned images...) is left to the deny and risk rules below, which
# then route it. An action not in this set is denied.

known_actions := ((code_actions | file_actions) | fs_actions) | {
	"sandbox.delete", "llm.chat", "tool.call", "egress", "secret.use", "image.admit",
}

allow if input.action in known_actions

# ----------------------------------------------------------------------------------------------
# Deny.

deny contains {"rule": "policy.no_allow_rule", "message": "no allow rule of the policy covers this action"} if {
	not allow
}

deny contains {"rule": "pci.sad_present", "message": "sensitive authentication data (CVV, track data or PIN) must never be processed"} if {
	input.dlp.sad
}

deny contains {"rule": "pci.raw_pan_external_model", "message": "raw card numbers are never sent to an external model"} if {
	input.action == "llm.chat"
	input.dlp.raw_pan
	external_provider
}

# Images, audio and files cannot be scanned: one may show a card. They go to an external model
# only from tiers the operator lists in `unscanned_content_tiers`.
deny contains {"rule": "llm.unscanned_content_external", "message": sprintf("%s content at %s cannot be scanned for card data; it is not sent to an external model", [part.kind, part.field])} if {
	input.action == "llm.chat"
	external_provider
	some part in object.get(input.request, "attachments", [])
	not input.principal.tier in object.get(cfg, "unscanned_content_tiers", [])
}

deny contains {"rule": "llm.provider_missing", "message": "an LLM request must name its provider"} if {
	input.action == "llm.chat"
	not input.request.provider
}

deny contains {"rule": "tier.provider_not_allowed", "message": sprintf("tenant tier %q may not use provider %q", [input.principal.tier, input.request.provider.name])} if {
	input.action == "llm.chat"
	input.request.provider
	not provider_allowed
}

deny contains {"rule": "egress.not_allowlisted", "message": sprintf("egress to %s:%d is not on the allowlist", [target.host, target.port])} if {
	some target in input.request.egress
	not egress_allowed(target)
}

deny contains {"rule": "egress.metadata_service", "message": sprintf("egress to %s is never allowed: it is a cloud metadata service", [target.host])} if {
	some target in input.request.egress
	lower(target.host) in cfg.egress_metadata_hosts
}

deny contains {"rule": "egress.too_many_targets", "message": sprintf("%d egress destinations requested; at most %d", [count(input.request.egress), cfg.egress_max_targets])} if {
	count(object.get(input.request, "egress", [])) > cfg.egress_max_targets
}

deny contains {"rule": "secret.not_granted", "message": sprintf("no grant lets this caller give secret %q to this sandbox", [name])} if {
	input.action in secret_actions
	some name in requested_secrets
	not secret_granted(name)
}

deny contains {"rule": "image.not_pinned", "message": "images must be referenced by digest (name@sha256:...)"} if {
	input.action == "image.admit"
	not pinned_image
}

# ----------------------------------------------------------------------------------------------
# Flow rules over the trace: what happened earlier in the same conversation or tool session
# (input.trace, oldest first: tool calls and tool results with their DLP findings and injection
# scores, never their text). A tool that sends data out of the organisation (cfg.flow.sink_tools)
# is refused after a tool result that carried a likely injection, a secret, or card data the
# call passes on; after a result from an untrusted source (cfg.flow.untrusted_sources) it needs
# a human.

trace := object.get(input, "trace", [])

sink_call if {
	input.action == "tool.call"
	input.request.tool.name in cfg.flow.sink_tools
}

earlier_results contains step if {
	some step in trace
	step.kind == "tool_result"
}

deny contains {"rule": "flow.injection_then_sink", "message": sprintf("tool %q sends data out after a result of %q that looked like a prompt injection (score %.2f)", [input.request.tool.name, step.tool, step.injection.score])} if {
	sink_call
	some step in earlier_results
	step.injection.score >= cfg.flow.taint_score
}

deny contains {"rule": "flow.secret_then_sink", "message": sprintf("tool %q sends data out after a result of %q that held a secret", [input.request.tool.name, step.tool])} if {
	sink_call
	some step in earlier_results
	some entity in cfg.flow.secret_entities
	object.get(step.dlp.counts, entity, 0) > 0
}

deny contains {"rule": "flow.card_data_then_sink", "message": sprintf("tool %q would send card data that a result of %q carried", [input.request.tool.name, step.tool])} if {
	sink_call
	object.get(input.dlp.counts, "CREDIT_CARD", 0) > 0
	some step in earlier_results
	object.get(step.dlp.counts, "CREDIT_CARD", 0) > 0
}

high contains {"rule": "flow.untrusted_then_sink", "message": sprintf("tool %q sends data out after reading from %q, an untrusted source", [input.request.tool.name, step.tool])} if {
	sink_call
	some step in earlier_results
	step.tool in cfg.flow.untrusted_sources
}

deny contains {"rule": "injection.detected", "message": sprintf("prompt injection detected (score %.2f)", [input.injection.score])} if {
	input.injection.score >= cfg.injection.deny_threshold
}

# ----------------------------------------------------------------------------------------------
# HIGH: require approval.

high contains {"rule": "pci.raw_pan_in_code", "message": "the code or command contains a raw card number"} if {
	input.action in code_actions
	input.dlp.raw_pan
}

high contains {"rule": "pci.raw_pan_in_code", "message": "the file transferred (or its path) contains a raw card number"} if {
	input.action in file_actions
	input.dlp.raw_pan
}

high contains {"rule": "pci.raw_pan_in_path", "message": "a path names a raw card number"} if {
	input.action in fs_actions
	input.dlp.raw_pan
}

high contains {"rule": "pci.raw_pan_in_tool_call", "message": "the tool call carries a raw card number"} if {
	input.action == "tool.call"
	input.dlp.raw_pan
}

high contains {"rule": "secret.approval_required", "message": sprintf("the grant for secret %q requires a human approval", [name])} if {
	input.action in secret_actions
	some name in requested_secrets
	secret_granted(name)
	not secret_granted_without_approval(name)
}

high contains {"rule": "risk.egress", "message": sprintf("network egress to %s:%d requested", [target.host, target.port])} if {
	some target in input.request.egress
	not egress_preapproved(target)
}

high contains {"rule": "risk.destructive_tool", "message": sprintf("tool %q can change or destroy state", [input.request.tool.name])} if {
	input.action == "tool.call"
	input.request.tool.name in cfg.destructive_tools
}

high contains {"rule": "injection.suspected", "message": sprintf("possible prompt injection (score %.2f)", [input.injection.score])} if {
	input.injection.score >= cfg.injection.review_threshold
	input.injection.score < cfg.injection.deny_threshold
}

# ----------------------------------------------------------------------------------------------
# MEDIUM: allowed and logged.

medium contains {"rule": "risk.code_execution", "message": "code execution in a sandbox"} if {
	input.action in {"run", "sandbox.exec", "sandbox.input"}
}

medium contains {"rule": "risk.file_transfer", "message": "a file copied into or out of a sandbox"} if {
	input.action in file_actions
}

medium contains {"rule": "risk.file_change", "message": "files created, moved or removed in a sandbox"} if {
	input.action in fs_change_actions
}

medium contains {"rule": "risk.file_transfer_with_secrets", "message": "a file transfer with a sandbox that holds secrets"} if {
	input.action in file_actions
	count(requested_secrets) > 0
}

medium contains {"rule": "risk.egress_preapproved", "message": sprintf("egress to %s:%d (pre-approved)", [target.host, target.port])} if {
	some target in input.request.egress
	egress_preapproved(target)
}

medium contains {"rule": "risk.code_with_secrets", "message": "code execution with secrets injected"} if {
	input.action in code_actions
	count(requested_secrets) > 0
}

medium contains {"rule": "risk.secret_use", "message": sprintf("%d secret(s) given to a sandbox", [count(requested_secrets)])} if {
	input.action == "secret.use"
}

medium contains {"rule": "risk.unknown_tool", "message": sprintf("tool %q is not known to be read-only", [input.request.tool.name])} if {
	input.action == "tool.call"
	not input.request.tool.name in cfg.read_only_tools
	not input.request.tool.name in cfg.destructive_tools
}

medium contains {"rule": "dlp.findings", "message": sprintf("content has %d DLP finding(s)", [finding_count])} if {
	finding_count > 0
}

medium contains {"rule": "llm.unscanned_content", "message": sprintf("%d part(s) of the request could not be scanned (images, audio, files)", [count(input.request.attachments)])} if {
	input.action == "llm.chat"
	count(object.get(input.request, "attachments", [])) > 0
}

# The cardholder's name or postal address is cardholder data only together with a card number
# (PCI DSS); alone it is personal data, counted by dlp.findings. Neither is ever SAD.
cardholder_entities := {"CARDHOLDER_NAME", "POSTAL_ADDRESS"}

cardholder_data_with_pan if {
	input.dlp.raw_pan
	some entity in cardholder_entities
	object.get(object.get(input.dlp, "counts", {}), entity, 0) > 0
}

medium contains {"rule": "pci.cardholder_data_with_pan", "message": "the cardholder's name or address goes with a raw card number"} if {
	cardholder_data_with_pan
}

medium contains {"rule": "pci.raw_pan_local_model", "message": "raw card numbers sent to a local model"} if {
	input.action == "llm.chat"
	input.dlp.raw_pan
	not external_provider
}

# ----------------------------------------------------------------------------------------------
# The decision.

decision := {"verdict": "deny", "risk": "HIGH", "reasons": [r | some r in deny]} if {
	count(deny) > 0
} else := {"verdict": "require_approval", "risk": "HIGH", "reasons": [r | some r in high]} if {
	count(high) > 0
} else := {"verdict": "allow", "risk": "MEDIUM", "reasons": [r | some r in medium]} if {
	count(medium) > 0
} else := {"verdict": "allow", "risk": "LOW", "reasons": []}

# ----------------------------------------------------------------------------------------------
# Helpers.

external_provider if input.request.provider.external == true

provider_allowed if {
	input.request.provider.name in object.get(cfg.tier_providers, input.principal.tier, [])
}

egress_allowed(target) if {
	some allowed in cfg.egress_allowlist
	egress_matches(allowed, target)
}

egress_allowed(target) if egress_preapproved(target)

# Destinations the operator trusts enough to grant without a human approval.
egress_preapproved(target) if {
	some allowed in object.get(cfg, "egress_preapproved", [])
	egress_matches(allowed, target)
}

# An entry matches the same host and port (names compare case-insensitively). A `*.domain` entry
# also matches every name below the domain and every narrower wildcard, never the domain itself.
egress_matches(allowed, target) if {
	allowed.port == target.port
	lower(allowed.host) == lower(target.host)
}

egress_matches(allowed, target) if {
	allowed.port == target.port
	startswith(allowed.host, "*.")
	endswith(trim_prefix(lower(target.host), "*"), lower(trim_prefix(allowed.host, "*")))
}

# A grant: {"secret": "<name or glob, e.g. stripe.*>", "tenants": [...], "roles": [...],
#           "subjects": [...], "images": [<glob>...], "approval": <bool>}. Every criterion given
# must match; a criterion left out matches everything.
secret_granted(name) if {
	some grant in object.get(cfg, "secret_grants", [])
	grant_matches(grant, name)
}

secret_granted_without_approval(name) if {
	some grant in object.get(cfg, "secret_grants", [])
	grant_matches(grant, name)
	not object.get(grant, "approval", false)
}

# The operator at a terminal of this host (`ztee run --secret`, `ztee sandbox create --secret`)
# unlocked the secret store with its master key: its secrets are theirs to use. Only the CLI
# makes subjects that start with `local:`; API callers are `apikey:<id>` or `oidc:<sub>`.
secret_granted(_) if local_operator

secret_granted_without_approval(_) if local_operator

local_operator if startswith(input.principal.subject, "local:")

# The operator's `--allow-egress` names the destinations they grant: pre-approved, logged at
# MEDIUM. Cloud metadata services stay denied for them too.
egress_preapproved(_) if local_operator

grant_matches(grant, name) if {
	glob.match(grant.secret, [], name)
	listed_or_open(grant, "tenants", input.principal.tenant)
	listed_or_open(grant, "subjects", input.principal.subject)
	grant_roles_match(grant)
	grant_image_matches(grant)
}

listed_or_open(grant, key, _) if not grant[key]

listed_or_open(grant, key, value) if value in grant[key]

grant_roles_match(grant) if not grant.roles

grant_roles_match(grant) if {
	some role in input.principal.roles
	role in grant.roles
}

grant_image_matches(grant) if not grant.images

grant_image_matches(grant) if {
	some pattern in grant.images
	glob.match(pattern, [], object.get(input.request, "image", "default"))
}

pinned_image if regex.match(`^[^@ ]+@sha256:[0-9a-f]{64}$`, input.request.image)

finding_count := sum([n | some n in object.get(input.dlp, "counts", {})])
