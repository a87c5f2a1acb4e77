//! BatchCreateUsers (client streaming): all-or-nothing, with the failing item's index.

mod common;

use common::{Backend, Client, TestResult, create, create_request, start_on, violations};
use portico::proto::user::{CreateUserRequest, ListUsersRequest};
use tonic::Code;

async fn count(client: &mut Client) -> Result<i32, tonic::Status> {
    Ok(client.list_users(ListUsersRequest::default()).await?.into_inner().total_count)
}

async fn creates_every_item_in_order(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let requests = vec![
        create_request("Ada", "ada@example.com"),
        CreateUserRequest { roles: vec!["admin".into()], ..create_request("Grace", "grace@example.com") },
        create_request("Alan", "alan@example.com"),
    ];
    let users = client.batch_create_users(futures::stream::iter(requests)).await?.into_inner().users;
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["Ada", "Grace", "Alan"]);
    assert_eq!(users[1].roles, ["admin"]);
    assert!(users.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(count(&mut client).await?, 3);

    let empty = client.batch_create_users(futures::stream::iter(Vec::<CreateUserRequest>::new())).await?.into_inner();
    assert!(empty.users.is_empty());
    Ok(())
}

async fn an_invalid_item_stores_nothing_and_is_named_by_index(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let requests = vec![
        create_request("Ada", "ada@example.com"),
        create_request("Grace", "grace@example.com"),
        create_request("Broken", "not-an-email"),
        create_request("Alan", "alan@example.com"),
    ];
    let status = client.batch_create_users(futures::stream::iter(requests)).await.expect_err("item 2 is invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("batch item 2"), "{}", status.message());
    assert_eq!(violations(&status)[0].0, "requests[2].email");
    assert_eq!(count(&mut client).await?, 0, "nothing stored");

    let duplicate = vec![create_request("A", "same@example.com"), create_request("B", "SAME@example.com")];
    let status = client.batch_create_users(futures::stream::iter(duplicate)).await.expect_err("repeated email");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status)[0], ("requests[1].email".to_string(), "repeats the email of item 0".to_string()));
    assert_eq!(count(&mut client).await?, 0);
    Ok(())
}

async fn an_email_clash_with_a_stored_user_rolls_back_the_whole_batch(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    create(&mut client, "Existing", "taken@example.com").await;
    let requests = vec![
        create_request("Ada", "ada@example.com"),
        create_request("Grace", "grace@example.com"),
        create_request("Clash", "Taken@Example.com"),
    ];
    let status = client.batch_create_users(futures::stream::iter(requests)).await.expect_err("clash");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("item 2"), "{}", status.message());
    assert_eq!(violations(&status)[0].0, "requests[2].email");
    assert_eq!(count(&mut client).await?, 1, "items 0 and 1 were rolled back");
    Ok(())
}

async fn more_than_1000_items_are_refused_and_nothing_is_stored(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let requests: Vec<_> = (0..1001).map(|i| create_request("U", &format!("u{i}@example.com"))).collect();
    let status = client.batch_create_users(futures::stream::iter(requests)).await.expect_err("too many");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("at most 1000"), "{}", status.message());
    assert_eq!(count(&mut client).await?, 0);

    let requests: Vec<_> = (0..1000).map(|i| create_request("U", &format!("u{i}@example.com"))).collect();
    let users = client.batch_create_users(futures::stream::iter(requests)).await?.into_inner().users;
    assert_eq!(users.len(), 1000, "exactly 1000 is allowed");
    Ok(())
}

/// A client that cancels its stream halfway (HTTP/2 RST_STREAM with CANCEL, as grpc-go's clients do when a call
/// is cancelled) has not sent a batch: nothing it sent may be stored. tonic's decoder alone would read that reset
/// as the clean end of the request stream (`Code::Cancelled` on a request body ends it); what keeps the batch out
/// is the UserService's `stream_reset` layer, which turns that reset into a failure the handler sees; without
/// it the batch was stored whenever the handler got past its last read before hyper dropped it (seen under CI's
/// load).
async fn a_stream_the_client_cancels_halfway_stores_nothing(backend: Backend) -> TestResult {
    use prost::Message;
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let socket = tokio::net::TcpStream::connect(server.addr).await?;
    let (sender, connection) = h2::client::handshake(socket).await?;
    tokio::spawn(connection);
    let mut sender = sender.ready().await?;
    let request = http::Request::post(format!("http://{}/user.UserService/BatchCreateUsers", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (response, mut body) = sender.send_request(request, false)?;
    for (name, email) in [("Ada", "ada@example.com"), ("Grace", "grace@example.com")] {
        let item = create_request(name, email).encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(item.len())?.to_be_bytes());
        frame.extend_from_slice(&item);
        body.send_data(frame.into(), false)?;
    }
    // Long enough for both items to reach the server; then the client cancels instead of ending its stream.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    body.send_reset(h2::Reason::CANCEL);
    drop(response);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(count(&mut client).await?, 0, "a cancelled batch stores nothing");
    Ok(())
}

per_backend!(
    a_stream_the_client_cancels_halfway_stores_nothing,
    creates_every_item_in_order,
    an_invalid_item_stores_nothing_and_is_named_by_index,
    an_email_clash_with_a_stored_user_rolls_back_the_whole_batch,
    more_than_1000_items_are_refused_and_nothing_is_stored,
);
