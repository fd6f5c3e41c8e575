//! argv and `$(VAR)` expansion (the kubelet's `kuberuntime` `expandContainerCommandAndArgs`
//! and `third_party/forked/golang/expansion`).

use std::collections::HashMap;

/// Expands `$(VAR)` references from `env`, as Kubernetes defines it: a defined variable is
/// replaced, an undefined reference is left as written, `$$` is an escaped `$`, and a `$` not
/// followed by `(` or `$` stays as is.
pub fn expand(input: &str, env: &HashMap<String, String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match env.get(name) {
                            Some(value) => out.push_str(value),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The argv a container runs with: `command` (argv\[0\] first) or else the image's entrypoint
/// or else `default_argv0`, then `args`; every element `$(VAR)`-expanded.
pub fn argv(
    command: &[String],
    args: &[String],
    image_entrypoint: &[String],
    default_argv0: &str,
    env: &HashMap<String, String>,
) -> Vec<String> {
    let head: Vec<String> = if !command.is_empty() {
        command.to_vec()
    } else if !image_entrypoint.is_empty() {
        image_entrypoint.to_vec()
    } else {
        vec![default_argv0.to_string()]
    };
    head.iter().chain(args).map(|a| expand(a, env)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("NAME".into(), "wasm".into()),
            ("EMPTY".into(), String::new()),
        ])
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let e = env();
        assert_eq!(expand("hello $(NAME)", &e), "hello wasm");
        assert_eq!(expand("$$(NAME)", &e), "$(NAME)");
        assert_eq!(expand("$(MISSING)", &e), "$(MISSING)");
        assert_eq!(expand("a$(EMPTY)b", &e), "ab");
        assert_eq!(expand("$$$(NAME)", &e), "$wasm");
        assert_eq!(expand("cost $5 $(", &e), "cost $5 $(");
        assert_eq!(expand("ünï $(NAME)", &e), "ünï wasm");
    }

    #[test]
    fn argv_prefers_command_then_entrypoint_then_module_name() {
        let e = env();
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            argv(&s(&["tool.wasm", "x"]), &s(&["--flag"]), &[], "m", &e),
            s(&["tool.wasm", "x", "--flag"])
        );
        assert_eq!(
            argv(&[], &s(&["$(NAME)"]), &s(&["ep"]), "m", &e),
            s(&["ep", "wasm"])
        );
        assert_eq!(
            argv(&[], &s(&["--flag"]), &[], "multitool", &e),
            s(&["multitool", "--flag"])
        );
    }
}
