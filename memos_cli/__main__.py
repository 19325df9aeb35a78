from memos_cli.cli.app import run

run()
