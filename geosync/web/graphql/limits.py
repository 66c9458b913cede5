"""Limits on what one GraphQL query may ask: its depth and its complexity.

A query over a limit is refused before it runs, with GitLab's wording, so a deep or wide query
costs the server a parse, never a slow answer. Complexity counts one per field, and a list
field's children once per row it may return (its `first` or `last`, else a full page).
"""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
)
from strawberry.extensions import AddValidationRules

from geosync.listing import MAX_PAGE

#: The deepest selection a query may nest.
MAX_DEPTH = 12
#: The highest complexity a query may have: a few full pages of every field.
MAX_COMPLEXITY = 10_000
#: Fields returning a page when no `first`/`last` is given.
PAGED_SUFFIXES = ("Registries", "ModelRecords", "BulkJobs")


class _LimitsRule(ValidationRule):
    """Reports an operation deeper or more complex than the limits."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
        fragments = {
            d.name.value: d
            for d in self.context.document.definitions
            if isinstance(d, FragmentDefinitionNode)
        }
        depth, cost = _measure(node.selection_set, fragments, frozenset())
        if depth > MAX_DEPTH:
            self.report_error(
                GraphQLError(
                    f"Query has depth of {depth}, which exceeds max depth of {MAX_DEPTH}", node
                )
            )
        elif cost > MAX_COMPLEXITY:
            self.report_error(
                GraphQLError(
                    f"Query has complexity of {cost}, which exceeds max complexity of"
                    f" {MAX_COMPLEXITY}",
                    node,
                )
            )


def _measure(
    selections: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    seen: frozenset[str],
) -> tuple[int, int]:
    """(depth, complexity) of a selection set; fragment cycles count once."""
    if selections is None:
        return 0, 0
    depth = cost = 0
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            inner_depth, inner_cost = _measure(selection.selection_set, fragments, seen)
            depth = max(depth, inner_depth + 1)
            cost += 1 + _rows(selection) * inner_cost
        elif isinstance(selection, InlineFragmentNode):
            inner_depth, inner_cost = _measure(selection.selection_set, fragments, seen)
            depth, cost = max(depth, inner_depth), cost + inner_cost
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in seen:
                continue
            inner_depth, inner_cost = _measure(fragment.selection_set, fragments, seen | {name})
            depth, cost = max(depth, inner_depth), cost + inner_cost
    return depth, cost


def _rows(field: FieldNode) -> int:
    """How many rows a field may return: its literal `first`/`last`, a page, or one."""
    for argument in field.arguments or ():
        if argument.name.value in ("first", "last"):
            value = argument.value
            if isinstance(value, IntValueNode):
                return max(1, min(int(value.value), MAX_PAGE))
            return MAX_PAGE
    return MAX_PAGE if field.name.value.endswith(PAGED_SUFFIXES) else 1


class QueryLimits(AddValidationRules):
    """The schema extension that enforces the limits."""

    MAX_ALIASES = 30
    MAX_TOKENS = 5_000

    def __init__(self) -> None:
        super().__init__([_LimitsRule])
