"""The formats a user would pick instead of a distillkit store, each written and read with its own library."""
