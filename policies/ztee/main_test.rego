# Unit tests for the default policy. Run them with `ztee policy test policies/`.
package ztee.main_test

import rego.v1

import data.ztee.main

agent := {"subject": "agent-7", "tenant": "acme", "roles": ["sandbox:run"], "tier": "standard"}

pci_agent := object.union(agent, {"tier": "pci"})

req(action, request) := {"principal": agent, "action": action, "request": request, "dlp": {"counts": {}, "raw_pan": false, "sad": false}, "injection": {"score": 0, "rules": []}}

with_dlp(inp, dlp) := object.union(inp, {"dlp": dlp})

with_score(inp, score) := object.union(inp, {"injection": {"score": score, "rules": []}})

rule_ids(d) := {r.rule | some r in d.reasons}

local_model := {"name": "local", "external": false}

openai := {"name": "openai", "external": true}

test_plain_code_runs_at_medium_risk if {
	d := main.decision with input as req("run", {"code": "print(1)"})
	d.verdict == "allow"
	d.risk == "MEDIUM"
	"risk.code_execution" in rule_ids(d)
}

test_sandbox_create_is_low_risk if {
	d := main.decision with input as req("sandbox.create", {"image": "python"})
	d == {"verdict": "allow", "risk": "LOW", "reasons": []}
}

test_read_only_tool_is_low_risk if {
	d := main.decision with input as req("tool.call", {"tool": {"name": "read_file", "args": {"path": "/a"}}})
	d.verdict == "allow"
	d.risk == "LOW"
}

test_unknown_tool_is_medium_risk if {
	d := main.decision with input as req("tool.call", {"tool": {"name": "summarize", "args": {}}})
	d.verdict == "allow"
	d.risk == "MEDIUM"
	"risk.unknown_tool" in rule_ids(d)
}

test_destructive_tool_requires_approval if {
	d := main.decision with input as req("tool.call", {"tool": {"name": "delete_file", "args": {}}})
	d.verdict == "require_approval"
	d.risk == "HIGH"
	"risk.destructive_tool" in rule_ids(d)
}

test_raw_pan_in_code_requires_approval if {
	inp := with_dlp(req("run", {"code": "x"}), {"counts": {"CREDIT_CARD": 1}, "raw_pan": true, "sad": false})
	d := main.decision with input as inp
	d.verdict == "require_approval"
	"pci.raw_pan_in_code" in rule_ids(d)
}

grants := [
	{"secret": "DB_PASSWORD", "tenants": ["acme"], "roles": ["sandbox:run"]},
	{"secret": "stripe.*", "tenants": ["acme"], "approval": true},
	{"secret": "DEPLOY_KEY", "subjects": ["agent-7"], "images": ["registry.local/deploy@*"]},
]

test_granted_secret_in_code_runs_at_medium_risk if {
	d := main.decision with input as req("sandbox.exec", {"cmd": ["deploy"], "secrets": ["DB_PASSWORD"]})
		with data.ztee.config.secret_grants as grants
	d.verdict == "allow"
	d.risk == "MEDIUM"
	"risk.code_with_secrets" in rule_ids(d)
}

test_secrets_are_denied_without_a_grant if {
	d := main.decision with input as req("sandbox.exec", {"cmd": ["deploy"], "secrets": ["DB_PASSWORD"]})
	d.verdict == "deny"
	rule_ids(d) == {"secret.not_granted"}
}

test_the_operator_at_the_terminal_uses_the_stores_secrets if {
	operator := {"subject": "local:alice", "tenant": "system", "roles": ["operator"], "tier": "standard"}
	inp := object.union(req("run", {"cmd": ["deploy"], "secrets": ["DB_PASSWORD"]}), {"principal": operator})
	d := main.decision with input as inp
	d.verdict == "allow"
	"risk.code_with_secrets" in rule_ids(d)
}

test_the_operators_egress_is_preapproved_but_never_to_a_metadata_service if {
	operator := {"subject": "local:alice", "tenant": "system", "roles": ["operator"], "tier": "standard"}
	inp := object.union(req("egress", {"egress": [{"host": "mirror.internal", "port": 443}]}), {"principal": operator})
	d := main.decision with input as inp
	d.verdict == "allow"
	"risk.egress_preapproved" in rule_ids(d)
	meta := object.union(req("egress", {"egress": [{"host": "169.254.169.254", "port": 80}]}), {"principal": operator})
	main.decision.verdict == "deny" with input as meta
	agent_inp := req("egress", {"egress": [{"host": "mirror.internal", "port": 443}]})
	main.decision.verdict == "deny" with input as agent_inp
}

test_an_api_caller_named_like_an_operator_gets_no_secret if {
	# Tenant and roles come from API keys and IdP claims; only the subject prefix is the CLI's.
	caller := {"subject": "oidc:local:alice", "tenant": "system", "roles": ["operator"], "tier": "standard"}
	inp := object.union(req("run", {"cmd": ["deploy"], "secrets": ["DB_PASSWORD"]}), {"principal": caller})
	d := main.decision with input as inp
	d.verdict == "deny"
	rule_ids(d) == {"secret.not_granted"}
}

test_a_grant_is_for_its_tenant_only if {
	other := object.union(req("secret.use", {"secrets": ["DB_PASSWORD"]}), {"principal": object.union(agent, {"tenant": "globex"})})
	d := main.decision with input as other with data.ztee.config.secret_grants as grants
	d.verdict == "deny"
	"secret.not_granted" in rule_ids(d)
}

test_a_grant_is_for_its_roles_only if {
	auditor := object.union(req("secret.use", {"secrets": ["DB_PASSWORD"]}), {"principal": object.union(agent, {"roles": ["auditor"]})})
	d := main.decision with input as auditor with data.ztee.config.secret_grants as grants
	d.verdict == "deny"
}

test_a_grant_is_for_its_images_only if {
	d := main.decision with input as req("secret.use", {"secrets": ["DEPLOY_KEY"], "image": "python"})
		with data.ztee.config.secret_grants as grants
	d.verdict == "deny"
	ok := main.decision with input as req("secret.use", {"secrets": ["DEPLOY_KEY"], "image": "registry.local/deploy@sha256:ab"})
		with data.ztee.config.secret_grants as grants
	ok.verdict == "allow"
}

test_one_ungranted_secret_denies_the_whole_request if {
	d := main.decision with input as req("secret.use", {"secrets": ["DB_PASSWORD", "ROOT_TOKEN"]})
		with data.ztee.config.secret_grants as grants
	d.verdict == "deny"
	d.reasons == [{"rule": "secret.not_granted", "message": "no grant lets this caller give secret \"ROOT_TOKEN\" to this sandbox"}]
}

test_allowlisted_egress_requires_approval if {
	d := main.decision with input as req("run", {"code": "x", "egress": [{"host": "pypi.org", "port": 443}]})
	d.verdict == "require_approval"
	"risk.egress" in rule_ids(d)
}

test_egress_outside_allowlist_is_denied if {
	d := main.decision with input as req("run", {"code": "x", "egress": [{"host": "evil.example", "port": 443}]})
	d.verdict == "deny"
	"egress.not_allowlisted" in rule_ids(d)
}

test_egress_action_follows_the_same_rules if {
	d := main.decision with input as req("egress", {"egress": [{"host": "pypi.org", "port": 443}]})
	d.verdict == "require_approval"
	"risk.egress" in rule_ids(d)
	denied := main.decision with input as req("egress", {"egress": [{"host": "pypi.org", "port": 80}]})
	denied.verdict == "deny"
	"egress.not_allowlisted" in rule_ids(denied)
}

wildcard_cfg := object.union(data.ztee.config, {"egress_allowlist": [{"host": "*.pythonhosted.org", "port": 443}]})

test_wildcard_allowlist_matches_names_below_the_domain if {
	allowed := [{"host": "files.pythonhosted.org", "port": 443}, {"host": "a.b.PythonHosted.org", "port": 443}, {"host": "*.x.pythonhosted.org", "port": 443}]
	every target in allowed {
		d := main.decision with input as req("egress", {"egress": [target]}) with data.ztee.config as wildcard_cfg
		d.verdict == "require_approval"
	}
}

test_wildcard_allowlist_refuses_the_domain_lookalikes_and_other_ports if {
	refused := [{"host": "pythonhosted.org", "port": 443}, {"host": "evilpythonhosted.org", "port": 443}, {"host": "files.pythonhosted.org", "port": 80}, {"host": "*.org", "port": 443}]
	every target in refused {
		d := main.decision with input as req("egress", {"egress": [target]}) with data.ztee.config as wildcard_cfg
		d.verdict == "deny"
		"egress.not_allowlisted" in rule_ids(d)
	}
}

test_preapproved_egress_runs_without_approval if {
	cfg := object.union(data.ztee.config, {"egress_preapproved": [{"host": "mirror.internal", "port": 8080}]})
	d := main.decision with input as req("egress", {"egress": [{"host": "mirror.internal", "port": 8080}]}) with data.ztee.config as cfg
	d.verdict == "allow"
	d.risk == "MEDIUM"
	"risk.egress_preapproved" in rule_ids(d)
	mixed := main.decision with input as req("egress", {"egress": [{"host": "mirror.internal", "port": 8080}, {"host": "pypi.org", "port": 443}]}) with data.ztee.config as cfg
	mixed.verdict == "require_approval"
}

test_metadata_service_is_denied_even_when_allowlisted if {
	cfg := object.union(data.ztee.config, {"egress_preapproved": [{"host": "169.254.169.254", "port": 80}]})
	d := main.decision with input as req("egress", {"egress": [{"host": "169.254.169.254", "port": 80}]}) with data.ztee.config as cfg
	d.verdict == "deny"
	"egress.metadata_service" in rule_ids(d)
}

test_too_many_egress_targets_are_denied if {
	targets := [{"host": sprintf("h%d.pythonhosted.org", [i]), "port": 443} | some i in numbers.range(1, 17)]
	d := main.decision with input as req("egress", {"egress": targets}) with data.ztee.config as wildcard_cfg
	d.verdict == "deny"
	"egress.too_many_targets" in rule_ids(d)
}

test_sad_is_always_denied if {
	inp := with_dlp(req("sandbox.create", {}), {"counts": {"CVV": 1}, "raw_pan": false, "sad": true})
	d := main.decision with input as inp
	d.verdict == "deny"
	"pci.sad_present" in rule_ids(d)
}

test_raw_pan_never_goes_to_an_external_model if {
	inp := with_dlp(req("llm.chat", {"provider": openai, "messages": [{"role": "user", "content": "x"}]}), {"counts": {"CREDIT_CARD": 1}, "raw_pan": true, "sad": false})
	d := main.decision with input as inp
	d.verdict == "deny"
	"pci.raw_pan_external_model" in rule_ids(d)
}

test_a_name_with_a_pan_is_cardholder_data_but_not_sad if {
	inp := with_dlp(req("llm.chat", {"provider": local_model, "messages": []}), {"counts": {"CREDIT_CARD": 1, "CARDHOLDER_NAME": 1}, "raw_pan": true, "sad": false})
	d := main.decision with input as inp
	d.verdict == "allow"
	"pci.cardholder_data_with_pan" in rule_ids(d)
	not "pci.sad_present" in rule_ids(d)
}

test_a_name_or_address_without_a_pan_is_not_cardholder_data if {
	inp := with_dlp(req("llm.chat", {"provider": local_model, "messages": []}), {"counts": {"CARDHOLDER_NAME": 1, "POSTAL_ADDRESS": 1}, "raw_pan": false, "sad": false})
	d := main.decision with input as inp
	d.verdict == "allow"
	not "pci.cardholder_data_with_pan" in rule_ids(d)
	"dlp.findings" in rule_ids(d)
}

test_raw_pan_to_local_model_is_logged if {
	inp := with_dlp(req("llm.chat", {"provider": local_model, "messages": []}), {"counts": {"CREDIT_CARD": 1}, "raw_pan": true, "sad": false})
	d := main.decision with input as inp
	d.verdict == "allow"
	d.risk == "MEDIUM"
	"pci.raw_pan_local_model" in rule_ids(d)
}

test_pci_tier_may_only_use_local_models if {
	inp := object.union(req("llm.chat", {"provider": openai, "messages": []}), {"principal": pci_agent})
	d := main.decision with input as inp
	d.verdict == "deny"
	"tier.provider_not_allowed" in rule_ids(d)
}

test_pci_tier_local_model_is_allowed if {
	inp := object.union(req("llm.chat", {"provider": local_model, "messages": []}), {"principal": pci_agent})
	d := main.decision with input as inp
	d == {"verdict": "allow", "risk": "LOW", "reasons": []}
}

test_unknown_tier_is_denied_for_llm if {
	inp := object.union(req("llm.chat", {"provider": local_model, "messages": []}), {"principal": object.union(agent, {"tier": "trial"})})
	d := main.decision with input as inp
	d.verdict == "deny"
}

test_images_do_not_go_to_an_external_model if {
	d := main.decision with input as req("llm.chat", {"provider": openai, "messages": [], "attachments": [{"kind": "image", "field": "messages[0].content[1]"}]})
	d.verdict == "deny"
	"llm.unscanned_content_external" in rule_ids(d)
}

test_images_go_to_a_local_model_and_are_logged if {
	d := main.decision with input as req("llm.chat", {"provider": local_model, "messages": [], "attachments": [{"kind": "image", "field": "messages[0].content[1]"}]})
	d.verdict == "allow"
	rule_ids(d) == {"llm.unscanned_content"}
}

test_an_operator_may_let_a_tier_send_images_out if {
	d := main.decision with input as req("llm.chat", {"provider": openai, "messages": [], "attachments": [{"kind": "file", "field": "input[0].content[0]"}]})
		with data.ztee.config.unscanned_content_tiers as ["standard"]
	d.verdict == "allow"
}

test_chat_without_provider_is_denied if {
	d := main.decision with input as req("llm.chat", {"messages": []})
	"llm.provider_missing" in rule_ids(d)
}

test_suspected_injection_requires_approval if {
	d := main.decision with input as with_score(req("tool.call", {"tool": {"name": "read_file", "args": {}}}), 0.6)
	d.verdict == "require_approval"
	"injection.suspected" in rule_ids(d)
}

test_certain_injection_is_denied if {
	d := main.decision with input as with_score(req("llm.chat", {"provider": local_model, "messages": []}), 0.95)
	d.verdict == "deny"
	rule_ids(d) == {"injection.detected"}
}

test_unpinned_image_is_denied if {
	d := main.decision with input as req("image.admit", {"image": "python:3.12"})
	"image.not_pinned" in rule_ids(d)
}

test_pinned_image_is_admitted if {
	d := main.decision with input as req("image.admit", {"image": "registry.local/python@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"})
	d.verdict == "allow"
}

test_granted_secret_use_is_logged if {
	d := main.decision with input as req("secret.use", {"secrets": ["DB_PASSWORD"]})
		with data.ztee.config.secret_grants as grants
	d.verdict == "allow"
	"risk.secret_use" in rule_ids(d)
}

test_a_grant_may_require_approval if {
	d := main.decision with input as req("secret.use", {"secrets": ["stripe.live"]})
		with data.ztee.config.secret_grants as grants
	d.verdict == "require_approval"
	rule_ids(d) == {"secret.approval_required"}
}

test_deny_outranks_approval if {
	inp := with_dlp(req("run", {"code": "x", "secrets": ["K"]}), {"counts": {}, "raw_pan": false, "sad": true})
	d := main.decision with input as inp
	d.verdict == "deny"
	not "risk.code_with_secrets" in rule_ids(d)
}

test_raw_pan_typed_into_a_running_process_requires_approval if {
	inp := with_dlp(req("sandbox.input", {"stdin": "x"}), {"counts": {"CREDIT_CARD": 1}, "raw_pan": true, "sad": false})
	d := main.decision with input as inp
	d.verdict == "require_approval"
	"pci.raw_pan_in_code" in rule_ids(d)
}

test_input_to_a_running_process_is_code_execution if {
	d := main.decision with input as req("sandbox.input", {"stdin": "print(1)\n"})
	d.verdict == "allow"
	d.risk == "MEDIUM"
	"risk.code_execution" in rule_ids(d)
}

test_looking_at_files_is_low_risk_and_changing_them_medium if {
	every action in ["file.stat", "file.list", "file.watch"] {
		d := main.decision with input as req(action, {})
		d == {"verdict": "allow", "risk": "LOW", "reasons": []}
	}
	every action in ["file.mkdir", "file.move", "file.remove"] {
		d := main.decision with input as req(action, {})
		d.verdict == "allow"
		d.risk == "MEDIUM"
		"risk.file_change" in rule_ids(d)
	}
}

test_a_raw_pan_in_a_path_requires_approval if {
	inp := with_dlp(req("file.stat", {}), {"counts": {"CREDIT_CARD": 1}, "raw_pan": true, "sad": false})
	d := main.decision with input as inp
	d.verdict == "require_approval"
	"pci.raw_pan_in_path" in rule_ids(d)
}

test_masked_findings_are_medium if {
	inp := with_dlp(req("tool.call", {"tool": {"name": "read_file", "args": {}}}), {"counts": {"EMAIL": 2}, "raw_pan": false, "sad": false})
	d := main.decision with input as inp
	d.risk == "MEDIUM"
	"dlp.findings" in rule_ids(d)
}

# ----------------------------------------------------------------------------------------------
# Deny by default: an action is allowed only when an allow rule names it.

benign := {
	"sandbox.create": {"image": "python"},
	"sandbox.exec": {"cmd": ["ls"], "image": "python"},
	"sandbox.input": {"stdin": "y", "image": "python"},
	"file.stat": {"image": "python"},
	"file.list": {"image": "python"},
	"file.watch": {"image": "python"},
	"file.mkdir": {"image": "python"},
	"file.move": {"image": "python"},
	"file.remove": {"image": "python"},
	"sandbox.delete": {},
	"run": {"code": "print(1)"},
	"file.write": {"image": "python"},
	"file.read": {"image": "python"},
	"llm.chat": {"provider": local_model, "messages": [{"role": "user", "content": "hi"}]},
	"tool.call": {"tool": {"name": "read_file", "args": {}}},
	"egress": {"egress": [{"host": "pypi.org", "port": 443}]},
	"secret.use": {"secrets": ["DB_PASSWORD"]},
	"image.admit": {"image": concat("", ["python@sha256:", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"])},
}

test_every_known_action_is_allowed if {
	denied := {action |
		some action, request in benign
		d := main.decision with input as req(action, request)
			with data.ztee.config.secret_grants as grants
			with data.ztee.config.egress_preapproved as [{"host": "pypi.org", "port": 443}]
		d.verdict != "allow"
	}
	count(denied) == 0
}

test_an_unknown_action_is_denied if {
	d := main.decision with input as req("frobnicate", {})
	d.verdict == "deny"
	rule_ids(d) == {"policy.no_allow_rule"}
}

test_an_input_without_an_action_is_denied if {
	d := main.decision with input as {"principal": agent, "request": {}}
	d.verdict == "deny"
	rule_ids(d) == {"policy.no_allow_rule"}
}

test_file_transfers_are_their_own_actions if {
	every action in ["file.write", "file.read"] {
		d := main.decision with input as req(action, {"image": "python"})
		d.verdict == "allow"
		d.risk == "MEDIUM"
		rule_ids(d) == {"risk.file_transfer"}
	}
}

test_sad_in_a_file_transfer_is_denied if {
	every action in ["file.write", "file.read"] {
		inp := with_dlp(req(action, {}), {"counts": {"CARD_VERIFICATION_CODE": 1}, "raw_pan": false, "sad": true})
		d := main.decision with input as inp
		d.verdict == "deny"
		"pci.sad_present" in rule_ids(d)
	}
}

test_raw_pan_in_a_file_transfer_requires_approval if {
	every action in ["file.write", "file.read"] {
		inp := with_dlp(req(action, {}), {"counts": {"CREDIT_CARD": 1}, "raw_pan": true, "sad": false})
		d := main.decision with input as inp
		d.verdict == "require_approval"
		"pci.raw_pan_in_code" in rule_ids(d)
	}
}

test_a_file_transfer_into_a_sandbox_with_ungranted_secrets_is_denied if {
	every action in ["file.write", "file.read"] {
		d := main.decision with input as req(action, {"secrets": ["DB_PASSWORD"]})
		d.verdict == "deny"
		rule_ids(d) == {"secret.not_granted"}
	}
}

test_a_file_transfer_with_granted_secrets_is_logged if {
	every action in ["file.write", "file.read"] {
		d := main.decision with input as req(action, {"secrets": ["DB_PASSWORD"]})
			with data.ztee.config.secret_grants as grants
		d.verdict == "allow"
		"risk.file_transfer_with_secrets" in rule_ids(d)
	}
}

# Flow rules over the trace.

call(tool, args) := {"kind": "tool_call", "tool": tool, "dlp": {"counts": {}, "raw_pan": false, "sad": false}, "injection": {"score": 0, "rules": []}}

result(tool, counts, score) := {"kind": "tool_result", "tool": tool, "dlp": {"counts": counts, "raw_pan": false, "sad": false}, "injection": {"score": score, "rules": []}}

with_trace(inp, steps) := object.union(inp, {"trace": steps})

send_email := req("tool.call", {"tool": {"name": "send_email", "args": {"to": "x@example.com"}}})

test_a_sink_after_an_injected_result_is_denied if {
	d := main.decision with input as with_trace(send_email, [call("lookup_order", {}), result("lookup_order", {}, 0.4)])
	d.verdict == "deny"
	"flow.injection_then_sink" in rule_ids(d)
}

test_a_sink_after_a_clean_result_is_not_refused_by_flow if {
	d := main.decision with input as with_trace(send_email, [call("lookup_order", {}), result("lookup_order", {}, 0.1)])
	d.verdict == "require_approval"
	not "flow.injection_then_sink" in rule_ids(d)
	not "flow.untrusted_then_sink" in rule_ids(d)
}

test_a_sink_after_a_result_with_a_secret_is_denied if {
	d := main.decision with input as with_trace(send_email, [result("read_config", {"SECRET": 1}, 0)])
	d.verdict == "deny"
	"flow.secret_then_sink" in rule_ids(d)
}

test_card_data_from_a_result_into_a_sink_is_denied if {
	inp := with_dlp(send_email, {"counts": {"CREDIT_CARD": 1}, "raw_pan": false, "sad": false})
	d := main.decision with input as with_trace(inp, [result("lookup_customer", {"CREDIT_CARD": 1}, 0)])
	d.verdict == "deny"
	"flow.card_data_then_sink" in rule_ids(d)
}

test_a_sink_without_the_card_data_is_not_refused_by_the_card_rule if {
	d := main.decision with input as with_trace(send_email, [result("lookup_customer", {"CREDIT_CARD": 1}, 0)])
	not "flow.card_data_then_sink" in rule_ids(d)
}

test_a_sink_after_an_untrusted_source_needs_a_human if {
	post := req("tool.call", {"tool": {"name": "post_message", "args": {}}})
	d := main.decision with input as with_trace(post, [result("fetch_page", {}, 0)])
	d.verdict == "require_approval"
	"flow.untrusted_then_sink" in rule_ids(d)
}

test_a_read_only_tool_after_an_injected_result_is_not_refused_by_flow if {
	look := req("tool.call", {"tool": {"name": "read_file", "args": {}}})
	d := main.decision with input as with_trace(look, [result("fetch_page", {}, 0.45)])
	d.verdict == "allow"
}
