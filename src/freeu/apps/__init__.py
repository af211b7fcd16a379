"""The applications of ``freeu``: the command line and what it runs, one floor above the library.

``import freeu`` imports nothing from here, and nothing in the library does: the core (``freeu.config``,
``freeu.fourier``, ``freeu.backbone``, ``freeu.hooks``, ``freeu.models``) needs only torch. The applications share
one runtime (:mod:`freeu.apps.runtime`: load a model, sample seeds, seeded noise, sizes), one set of options
(:mod:`freeu.apps.options`), one error-to-exit-code mapping (:mod:`freeu.apps.errors`) and one image writer
(:mod:`freeu.apps.imaging`). The commands: :mod:`~freeu.apps.plan`, :mod:`~freeu.apps.generate` (generate, sweep,
info), :mod:`~freeu.apps.analyze`, :mod:`~freeu.apps.evaluate`, :mod:`~freeu.apps.ui` and
:mod:`~freeu.apps.demo` (the bundled demo model and its training).
"""
