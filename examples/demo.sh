# What the examples share, sourced by each run.sh after it has set
# `runbox()` and `say()`: the demo's mutation token and its human, alice.
# Needs: $data_dir (the data dir the example uses).

# The mutation token: created once per data dir, kept beside it for the demo.
demo_token() {
    local token_file="$data_dir.demo-token"
    if [ -z "${RUNBOX_MUTATION_TOKEN:-}" ]; then
        if [ ! -s "$token_file" ]; then
            mkdir -p "$(dirname "$token_file")"
            if ! runbox --data-dir "$data_dir" token init > "$token_file"; then
                rm -f "$token_file"
                echo "this data dir has a mutation token already: export RUNBOX_MUTATION_TOKEN and run again" >&2
                exit 1
            fi
            chmod 600 "$token_file"
        fi
        RUNBOX_MUTATION_TOKEN="$(cat "$token_file")"
        export RUNBOX_MUTATION_TOKEN
    fi
    export RUNBOX_DATA_DIR="$data_dir"
}

# alice is a human: her decisions are signed with her SSH key, and runbox
# verifies them against the data dir's allowed_signers. The demo makes a
# throwaway key beside the data dir; a real alice signs with her own key
# (ssh-agent, a FIDO key) on her own machine. Sets $alice_key.
demo_alice() {
    alice_key="$data_dir.demo-alice"
    if [ ! -f "$alice_key" ]; then
        say "runbox human add alice   (a throwaway SSH key for the demo's human)"
        ssh-keygen -q -t ed25519 -N "" -C "alice (runbox demo)" -f "$alice_key"
        runbox human add alice "$alice_key.pub"
    fi
}
