async def test_redis_fixture_is_real_and_flushed(redis):
    assert await redis.ping()
    assert await redis.dbsize() == 0
