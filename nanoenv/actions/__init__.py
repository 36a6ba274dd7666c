"""What an agent sends: accept an action, apply it to the task's script, police the result.

``accept`` turns an action (a diff, a whole script, a search/replace) into a candidate script;
``patching`` applies and checks unified diffs; ``protected`` guards the regions a patch may not
change. Every refusal is a :class:`~nanoenv.errors.PatchError` (outcome ``patch_failed``).
"""
