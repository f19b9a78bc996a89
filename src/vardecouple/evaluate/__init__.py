"""The evaluate stage: decode (:mod:`.decode`), score (:mod:`.metrics`, :mod:`.varietyid`), and the
two together on test sets (:mod:`.scoring`)."""
