#!/usr/bin/env bash
# The memos tour on a small example cube (run by `make demo`). Each step prints the command it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
MEMOS=".venv/bin/memos"
CUBE="cubes/example"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; "$@"; }

rm -rf "$CUBE"
step $MEMOS init "$CUBE" --name example --description "Project Heron: notes, facts and a stand-up chat"
step $MEMOS ingest "$CUBE" examples/corpus/project-notes.md examples/corpus/facts.jsonl examples/corpus/standup-chat.json
step $MEMOS ingest "$CUBE" examples/corpus/facts.jsonl            # again: nothing is stored twice
step $MEMOS query "$CUBE" "when does the beta open?" -k 3
step $MEMOS query "$CUBE" "what food should we avoid at team dinners" -k 2
step $MEMOS query "$CUBE" "bluetooth" --speaker Priya -k 2 --retrieval lexical
printf 'who approves the budget?\nwhich iPads are unsupported?\n' > /tmp/memos-demo-questions.txt
step $MEMOS query "$CUBE" --batch /tmp/memos-demo-questions.txt -k 1
step $MEMOS promote "$CUBE" --to activation --name team --tag people    # a KV snapshot (SmolLM2, converted once)
step $MEMOS chat "$CUBE" --kv team --no-retrieval --no-remember --greedy --max-new-tokens 40 -m "Who is on parental leave?"
step $MEMOS chat "$CUBE" --no-remember --greedy --max-new-tokens 40 --show-memories -m "When does the public beta open?"
step $MEMOS verify "$CUBE"
step $MEMOS stats "$CUBE"
