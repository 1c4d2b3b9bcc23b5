/* test_outbox_memv.c - which outbox events bump membership versions, and the command
 * that does it (outbox_memv.h). The script itself runs against Redis in
 * tests/integration/test_wss_members.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "chorus/event.h"
#include "outbox_memv.h"

/* The events that change channel lists bump their users; channel.deleted bumps the
 * channel's members (its users are NULL). */
static void test_membership_events_bump(void **state)
{
    (void)state;
    const char *types[] = {"channel.created", "member.joined", "member.left",
                           "workspace.left", "workspace.deleted"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        outbox_bump b;
        assert_int_equal(outbox_bump_build(types[i], "{7,42}", "{99}", &b), 1);
        assert_int_equal(b.argc, 6); /* EVAL script 2 key key ttl */
        assert_string_equal(b.argv[0], "EVAL");
        assert_string_equal(b.argv[2], "2");
        assert_string_equal(b.argv[3], "chorus:memv:7");
        assert_string_equal(b.argv[4], "chorus:memv:42");
        assert_string_equal(b.argv[5], "86400");
        for (int k = 0; k < b.argc; k++)
            assert_int_equal(b.lens[k], strlen(b.argv[k]));
        outbox_bump_free(&b);
    }
    outbox_bump b;
    assert_int_equal(outbox_bump_build("channel.deleted", "", "{3,4,5}", &b), 1);
    assert_int_equal(b.argc, 7);
    assert_string_equal(b.argv[2], "3");
    assert_string_equal(b.argv[5], "chorus:memv:5");
    outbox_bump_free(&b);
}

/* Messages, reactions, channel updates, read markers and workspace joins change no
 * channel list; a membership event naming nobody (a channel deleted without members)
 * needs no command; a list that does not parse bumps nobody either (the encoder refuses
 * the same list, so the row is published as undeliverable). */
static void test_other_events_do_not(void **state)
{
    (void)state;
    const char *types[] = {"message.created", "message.updated", "reaction.added",
                           "channel.updated", "read.updated", "workspace.joined",
                           "workspace.created", "workspace.updated"};
    outbox_bump b = {0};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        assert_int_equal(outbox_bump_build(types[i], "{7}", "{7}", &b), 0);
    assert_int_equal(outbox_bump_build("channel.deleted", "", "", &b), 0);
    assert_int_equal(outbox_bump_build("channel.deleted", "", "{}", &b), 0);
    assert_int_equal(outbox_bump_build("member.joined", "{1,x}", "", &b), 0);
    assert_null(b.argv);
}

/* As many users as an event may carry fit in one command. */
static void test_largest_list(void **state)
{
    (void)state;
    char *list = malloc(EVENT_MAX_USERS * 8 + 2);
    char *p = list;
    *p++ = '{';
    for (int i = 1; i <= EVENT_MAX_USERS; i++)
        p += sprintf(p, "%d%s", i, i < EVENT_MAX_USERS ? "," : "}");
    outbox_bump b;
    assert_int_equal(outbox_bump_build("workspace.deleted", list, "", &b), 1);
    assert_int_equal(b.argc, EVENT_MAX_USERS + 4);
    assert_string_equal(b.argv[3 + EVENT_MAX_USERS - 1], "chorus:memv:10000");
    outbox_bump_free(&b);
    free(list);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_membership_events_bump),
        cmocka_unit_test(test_other_events_do_not),
        cmocka_unit_test(test_largest_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
