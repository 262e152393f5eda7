from distillkit.cli import app

app()
