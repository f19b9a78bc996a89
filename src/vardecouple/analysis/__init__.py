"""The analysis stage: geometry of representations (:mod:`.geometry`), MDL probing
(:mod:`.codelength`), and the ``vardecouple probe`` command's run (:mod:`.probing`)."""
