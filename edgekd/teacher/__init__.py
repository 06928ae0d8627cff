"""The `teacher` stage: load (and fine-tune) the model every later stage distils from."""
