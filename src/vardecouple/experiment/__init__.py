"""The experiment stage: one TOML config (:mod:`.config`), its arms (:mod:`.arms`), the
run that trains and evaluates them (:mod:`.run`), its results (:mod:`.results`), and the
built-in demo (:mod:`.demo`)."""
