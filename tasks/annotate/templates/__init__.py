"""The judge and critique prompt templates (package data, loaded by tasks.annotate.prompts)."""
