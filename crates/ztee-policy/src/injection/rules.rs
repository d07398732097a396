//! Rules for the known injection families. Patterns run on normalized (lowercased, de-obfuscated)
//! views, all at once through one `RegexSet`.

use regex::bytes::{RegexSet, RegexSetBuilder};

use crate::PolicyError;

/// One rule: its id (`family.name`), how strongly a match alone indicates an injection, and the
/// pattern.
struct Rule {
    id: &'static str,
    weight: f64,
    pattern: &'static str,
}

const RULES: &[Rule] = &[
    // Instruction override.
    Rule {
        id: "instruction_override.ignore_previous",
        weight: 0.9,
        pattern: r"\b(ignore|disregard|forget|skip|bypass|override|stop following)\b[^.\n]{0,40}\b(previous|prior|above|earlier|preceding|original|all|any|your|system|these)\b[^.\n]{0,25}\b(instructions?|prompts?|rules|directions|directives|guidelines|constraints|system prompt|requests|commands|orders|inputs?)\b",
    },
    Rule {
        id: "instruction_override.forget_everything",
        weight: 0.8,
        pattern: r"\bforget (everything|all) (you were told|you know|above|before)",
    },
    Rule {
        id: "instruction_override.new_instructions",
        weight: 0.6,
        pattern: r"\b(new|updated|real|actual) (instructions|rules|task|policy)( from [a-z ]{1,30})?\s*(:|are:|is:|is to\b)",
    },
    Rule {
        id: "instruction_override.rules_void",
        weight: 0.85,
        pattern: r"\b(earlier|previous|prior|original) (rules|instructions|directives)( [a-z]+){0,2} (no longer apply|are void|were a test|are cancelled)",
    },
    Rule {
        id: "instruction_override.do_not_follow",
        weight: 0.75,
        pattern: r"\b(do not|don't|stop|cancel)( following| follow)? (your|the|all) (original |previous |prior |earlier )?(instructions|guidelines|directives|rules)\b",
    },
    Rule {
        id: "instruction_override.from_now_on",
        weight: 0.5,
        pattern: r"\bfrom now on,? you (will|must|are|shall)\b",
    },
    Rule {
        id: "instruction_override.banner",
        weight: 0.6,
        pattern: r"(\*{2,}|#{2,}|\[|=={2,})\s*(urgent |important |priority |new )+(instructions?|task|directives?|orders)\b|\bpriority task:",
    },
    Rule {
        id: "instruction_override.regardless_previous",
        weight: 0.75,
        pattern: r"\b(regardless of|instead of|in place of|overriding|supersedes?|takes? precedence over)( any| all| your| the)? (previous|prior|pre-existing|earlier|original|other|existing) (input|inputs|instructions|guidelines|rules|requests|commands|directives|system prompts?)\b",
    },
    Rule {
        id: "instruction_override.forgot_to_ask",
        weight: 0.6,
        pattern: r"\b(forgot|forgotten|neglected) to (ask|tell|instruct) you to\b|\bmade a mistake when i gave you\b",
    },
    Rule {
        id: "instruction_override.before_the_task",
        weight: 0.6,
        pattern: r"\bbefore you (can )?(solve|complete|answer|continue|finish|do|start|perform) (the|your|this|any|my) (task|request|question|job)\b|\bimportant message from (me|the user|your (user|developer|admin|owner))\b",
    },
    Rule {
        id: "instruction_override.special_case",
        weight: 0.75,
        pattern: r"\bif you are (told|asked|instructed) to (summari[sz]e|answer|translate|read|process|review)\b",
    },
    Rule {
        id: "instruction_override.privileged_mode",
        weight: 0.6,
        pattern: r"\b(developer|debug|debugging|admin|administrator|maintenance|diagnostic|god|root|sudo|unrestricted) mode\b[^.\n]{0,40}\b(enabled|activated|active|on|engaged|you (are|must|need|will|can))\b|\b(you are|you're) (now )?(operating|running) in [a-z]+ mode\b",
    },
    Rule {
        id: "instruction_override.drop_limits",
        weight: 0.7,
        pattern: r"\b(disregard|ignore|drop|abandon|remove|lift|bypass) (all|any|your) (boundaries|limits|limitations|restrictions|filters|safeguards|safety (measures|guidelines|rules))\b",
    },
    // Role play / jailbreak personas.
    Rule {
        id: "role_play.persona",
        weight: 0.85,
        pattern: r"\b(you are|you're) (now )?(dan|jailbroken|unrestricted|uncensored|unfiltered|evil|an ai (with no|without))",
    },
    Rule {
        id: "role_play.do_anything_now",
        weight: 0.9,
        pattern: r"\bdo anything now\b",
    },
    Rule {
        id: "role_play.no_restrictions",
        weight: 0.85,
        pattern: r"\b(pretend|imagine|act as|roleplay|role-play|role play|simulate|respond as|persona)\b[^.\n]{0,60}\b(no|without|any|never)\b[^.\n]{0,20}\b(restrictions|rules|filters|ethics|content policy|limits|safety|refuses)\b",
    },
    Rule {
        id: "role_play.developer_mode",
        weight: 0.8,
        pattern: r"\bdeveloper mode\b[^.\n]{0,60}\b(ignore|no rules|without|bypass|safety)\b",
    },
    Rule {
        id: "role_play.stay_in_character",
        weight: 0.6,
        pattern: r"\b(stay in character|never refuses?|(respond|answer|reply|speak|write|talk)[^.\n]{0,20}without any filters|no content policy|(break|breaking|broke|drop|leave) (out of )?character)\b",
    },
    Rule {
        id: "role_play.grandmother",
        weight: 0.6,
        pattern: r"\b(deceased|late|dead) (grandmother|grandma|grandfather)\b",
    },
    // Jailbreak prompts as they circulate: a persona or "mode" that is declared free of the
    // model's policies, with answer formats that force a second, unfiltered reply.
    Rule {
        id: "role_play.policy_free",
        weight: 0.7,
        pattern: r"\b(not bound by|free (of|from)|break(s|ing)? free (of|from)|no longer (bound|restricted)|without (any )?(regard (for|to)|concern for)|(does not|doesn't|do not|don't|will not|won't|never) (have to |need to )?(follow|abide by|adhere to|obey|care about|have|comply with|respect))\b[^.\n]{0,40}\b(any |the |their |its |your )?(ethical|moral|ethics|morals|content|safety|openai|openai's|anthropic|usage)\b[^.\n]{0,20}\b(guidelines|policies|policy|restrictions|rules|filters|principles|constraints|boundaries|limitations|standards)\b",
    },
    Rule {
        id: "role_play.mode_switch",
        weight: 0.75,
        pattern: r"\b(god ?mode|jailbreak (mode|prompt)|jailbroken|dan mode|developer mode (enabled|output|response)|evil (mode|confidant)|opposite mode|unfiltered mode)\b|\b(safety|content|ethics|ethical) (filters?|restrictions|mode|guidelines|policies|protocols)\W{0,4}(are |is )?(now )?(disabled|off|suspended|lifted|removed|deactivated|none)\b",
    },
    Rule {
        id: "role_play.never_refuse",
        weight: 0.45,
        pattern: r"\b(never|not|don't|do not|will not|won't|cannot|can't|must not|should not|shouldn't) (ever )?(refuse|decline|reject|deny)( (to answer|a request|any request|any question|my request|the request|anything))?\b|\b(never|don't|do not|will not|won't|must not) (apologi[sz]e|add (any )?(warnings|disclaimers)|include (any )?(warnings|disclaimers|notes))\b",
    },
    Rule {
        id: "role_play.amoral_persona",
        weight: 0.6,
        pattern: r"\b(amoral|unethical|unfiltered|uncensored|unrestricted|unhinged|immoral|lawless)\b[^.\n]{0,30}\b(ai|chatbot|bot|model|assistant|character|persona|entity|version|response|answers?)\b",
    },
    Rule {
        id: "role_play.dual_response",
        weight: 0.6,
        pattern: r"\b(two|2|both) (different |separate )?(responses|answers|paragraphs|ways)\b[^\n]{0,120}\b(normal|classic|standard|filtered|unfiltered|jailbroken|dan|opposite)\b",
    },
    Rule {
        id: "role_play.act_as_ai",
        weight: 0.5,
        pattern: r"\b(you (are|will be|will|must|shall|are going to|'re going to|'ll) (now )?(act|acting|pretend|pretending|play|playing|simulate|simulating|roleplay|roleplaying|become|be) (as|to be|the role of))\b[^.\n]{0,60}\b(ai|chatbot|bot|model|assistant)\b",
    },
    Rule {
        id: "role_play.immerse",
        weight: 0.6,
        pattern: r"\b(immerse yourself (in|into)|you are about to (become|play|act|immerse|take on)|take on the (role|persona) of (an?|another) (ai|chatbot|model|assistant))\b",
    },
    Rule {
        id: "role_play.none_of_your_responses",
        weight: 0.6,
        pattern: r"\bnone of your (responses|answers|replies)\b[^.\n]{0,40}\b(should|will|can|must)\b",
    },
    Rule {
        id: "role_play.freed",
        weight: 0.6,
        pattern: r"\b(you (have been|are|were|'ve been) (now )?(freed|liberated|released|unshackled)|free (from|of) (the )?(typical |usual )?(confines|restrictions|rules|limitations|chains|shackles))\b",
    },
    Rule {
        id: "role_play.anything_goes",
        weight: 0.45,
        pattern: r"\b(can|will|must|should) (do|say|answer|generate|write) anything\b|\b(answer|respond to) (any|every|all) (question|request|prompt)s?\b[^.\n]{0,30}\b(regardless|no matter|without)\b",
    },
    Rule {
        id: "role_play.policies_do_not_apply",
        weight: 0.7,
        pattern: r"\b(ethical|moral|content|safety|usage|openai|openai's) (guidelines|policies|policy|restrictions|filters|rules|principles|constraints)\b[^.\n]{0,20}\b(do not|don't|does not|doesn't|no longer|will not|won't) (apply|matter|exist|bind)\b",
    },
    Rule {
        id: "role_play.token_game",
        weight: 0.6,
        pattern: r"\b(\d+|some|five|ten) tokens (will be |are )?(deducted|taken away|lost)\b|\btoken system\b|\byou (will )?(lose|run out of) (\d+ |all |your )?tokens\b",
    },
    Rule {
        id: "role_play.even_if_harmful",
        weight: 0.5,
        pattern: r"\b(even if|regardless of whether|no matter (if|whether|how)) (it|the (request|content|answer|question)|they)( is| are| seems?| might be| may be)? (illegal|unethical|immoral|harmful|dangerous|offensive|inappropriate|explicit)\b",
    },
    Rule {
        id: "role_play.always_comply",
        weight: 0.5,
        pattern: r"\byou (must|will|shall|have to) always (answer|respond|comply|obey|provide|fulfil|fulfill|generate)\b",
    },
    // System-prompt extraction.
    Rule {
        id: "system_prompt_extraction.reveal",
        weight: 0.8,
        pattern: r"\b(reveal|show|print|repeat|output|tell me|display|echo|translate|summarize|list|give me|dump)\b[^.\n]{0,30}\b((your|the) (full |exact |complete )?(hidden|secret|original|initial|system) (instructions|prompt|message)|your (full |exact )?(instructions|system prompt|system message|prompt|configuration)|the system (prompt|message))",
    },
    Rule {
        id: "system_prompt_extraction.repeat_above",
        weight: 0.8,
        pattern: r"\brepeat (the |all )?(text|words|everything|instructions) (above|before)",
    },
    Rule {
        id: "system_prompt_extraction.everything_before",
        weight: 0.7,
        pattern: r"\b(everything|all text|the text) (before|above) this (message|line|point)",
    },
    Rule {
        id: "system_prompt_extraction.what_is_your_prompt",
        weight: 0.75,
        pattern: r"\bwhat (is|are|were) (your|the exact) (system prompt|instructions|initial instructions|hidden instructions)",
    },
    // Exfiltration.
    Rule {
        id: "exfiltration.send_secrets",
        weight: 0.9,
        pattern: r"\b(send|post|upload|forward|email|transmit|exfiltrate|leak|append|include|encode|put|write)\b[^\n]{0,60}\b(api keys?|passwords?|credentials|secrets?|session tokens?|tokens|card numbers?|cvv|customer records|environment variables|conversation)\b[^\n]{0,80}(https?://|www\.|[a-z0-9._-]+@[a-z0-9-]+\.[a-z0-9.-]+)",
    },
    Rule {
        id: "exfiltration.secrets_then_send",
        weight: 0.85,
        pattern: r"\b(collect|gather|grab|find|take|read)\b[^\n]{0,30}\b(api keys?|passwords?|credentials|secrets|session tokens?|card numbers?|cvv|customer records|environment variables)\b[^\n]{0,60}\b(send|post|upload|forward|email|transmit)\b[^\n]{0,40}(https?://|www\.|[a-z0-9._-]+@[a-z0-9-]+\.[a-z0-9.-]+)",
    },
    Rule {
        id: "exfiltration.markdown_image",
        weight: 0.7,
        pattern: r"!\[[^\]]*\]\(https?://[^)\s]*\?[^)\s]*=",
    },
    Rule {
        id: "exfiltration.secrecy",
        weight: 0.6,
        pattern: r"\b(do not|don't|without|never) (mention|tell|telling|informing|letting|notify)[^.\n]{0,30}\b(user|them|anyone|the human)\b",
    },
    Rule {
        id: "exfiltration.keyword",
        weight: 0.8,
        pattern: r"\bexfiltrat",
    },
    // Tool misuse, usually arriving inside tool outputs and documents.
    Rule {
        id: "tool_misuse.agent_directive",
        weight: 0.75,
        pattern: r"\b(ai|llm|assistant|agent|model|chatbot)\b[^.\n]{0,40}\b(must|should|need to|are required to|is required to|call|invoke|execute|run|use)\b[^.\n]{0,40}\b(tool|function|command|run_command|delete_file|send_email|transfer_funds|execute_sql|write_file)\b",
    },
    Rule {
        id: "tool_misuse.note_to_ai",
        weight: 0.75,
        pattern: r"\b(note|attention|instruction|instructions|message|important) (to|for) (the |any )?(ai|llm|assistant|agent|model)s?\b",
    },
    Rule {
        id: "tool_misuse.if_you_are_ai",
        weight: 0.8,
        pattern: r"\bif you are an? (ai|llm|language model|assistant|agent|ai model)\b",
    },
    Rule {
        id: "tool_misuse.role_markers",
        weight: 0.7,
        pattern: r"<\|im_start\|>|<\|im_end\|>|\[inst\]|<<sys>>|\[system\]|### ?(system|instruction)|</?system>|\battention agent\b",
    },
    Rule {
        id: "tool_misuse.dangerous_command",
        weight: 0.6,
        pattern: r"\b(curl|wget)\b[^\n|]{0,80}\|\s*(sh|bash)\b|\brm -rf /|cat ~/\.(aws|ssh)|/etc/shadow|env \| curl",
    },
    Rule {
        id: "tool_misuse.fake_approval",
        weight: 0.6,
        pattern: r"\bwithout asking (the )?user\b|\buser (has )?already approved\b|\bauthori[sz]ed by the admin\b",
    },
];

pub struct RuleSet {
    set: RegexSet,
}

/// A matched rule and its weight.
pub struct Hit {
    pub id: &'static str,
    pub weight: f64,
}

impl RuleSet {
    pub fn new() -> Result<Self, PolicyError> {
        // Views are lowercased and mostly ASCII: ASCII-only classes and word boundaries keep
        // the whole set inside the lazy DFA, which a Unicode `\b` would make give up.
        let set = RegexSetBuilder::new(RULES.iter().map(|r| format!("(?-u){}", r.pattern)))
            .dfa_size_limit(16 << 20)
            .build()
            .map_err(|e| PolicyError::Model {
                what: "rule set",
                reason: e.to_string(),
            })?;
        Ok(RuleSet { set })
    }

    pub fn matches(&self, text: &str) -> impl Iterator<Item = Hit> + '_ {
        self.set
            .matches(text.as_bytes())
            .into_iter()
            .filter_map(|i| {
                RULES.get(i).map(|r| Hit {
                    id: r.id,
                    weight: r.weight,
                })
            })
    }
}
