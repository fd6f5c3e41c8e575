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

/// The argv a container runs with, by Kubernetes' rules for `command`/`args` over the image's
/// `Entrypoint`/`Cmd`: `command` replaces the entrypoint (and drops `Cmd`); `args` replace
/// `Cmd`. An image with neither (a wasm artifact) runs as `default_argv0`. Only the spec's
/// `command` and `args` are `$(VAR)`-expanded, never the image's entrypoint or cmd (upstream
/// expands the container's fields before the runtime merges in the image's).
pub fn argv(
    command: &[String],
    args: &[String],
    image: (&[String], &[String]),
    default_argv0: &str,
    env: &HashMap<String, String>,
) -> Vec<String> {
    let (entrypoint, cmd) = image;
    let expanded =
        |list: &[String]| -> Vec<String> { list.iter().map(|a| expand(a, env)).collect() };
    let (head, tail): (Vec<String>, Vec<String>) = if !command.is_empty() {
        (expanded(command), expanded(args))
    } else if entrypoint.is_empty() && cmd.is_empty() {
        (vec![default_argv0.to_string()], expanded(args))
    } else if !args.is_empty() {
        (entrypoint.to_vec(), expanded(args))
    } else {
        (entrypoint.to_vec(), cmd.to_vec())
    };
    head.into_iter().chain(tail).collect()
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
    fn argv_follows_kubernetes_command_and_args_rules() {
        let e = env();
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            argv(
                &s(&["tool.wasm", "x"]),
                &s(&["--flag"]),
                (&[], &[]),
                "m",
                &e
            ),
            s(&["tool.wasm", "x", "--flag"])
        );
        let (ep, cmd) = (s(&["ep"]), s(&["default"]));
        assert_eq!(
            argv(&[], &s(&["$(NAME)"]), (&ep, &cmd), "m", &e),
            s(&["ep", "wasm"])
        );
        assert_eq!(argv(&[], &[], (&ep, &cmd), "m", &e), s(&["ep", "default"]));
        // The image's own entrypoint and cmd are never expanded.
        let (ep_var, cmd_var) = (s(&["$(NAME)"]), s(&["$(NAME)"]));
        assert_eq!(
            argv(&[], &[], (&ep_var, &cmd_var), "m", &e),
            s(&["$(NAME)", "$(NAME)"])
        );
        assert_eq!(
            argv(&s(&["/other.wasm"]), &[], (&ep, &cmd), "m", &e),
            s(&["/other.wasm"])
        );
        assert_eq!(
            argv(&[], &s(&["/x.wasm"]), (&[], &cmd), "m", &e),
            s(&["/x.wasm"])
        );
        assert_eq!(
            argv(&[], &s(&["--flag"]), (&[], &[]), "multitool", &e),
            s(&["multitool", "--flag"])
        );
    }
}
